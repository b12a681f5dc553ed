"""faithfulness metrics of explanations."""

__all__: list = []
