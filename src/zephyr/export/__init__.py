"""Leaving zephyr: a trained model in the forms deployment tools load (a merged plain checkpoint)."""

from zephyr.export.merge import export_model, push_folder

__all__ = ["export_model", "push_folder"]
