"""`zephyr run`: a recipe's stages as one resumable pipeline (``stages`` the table, ``keys`` what makes a
finished stage reusable, ``runner`` the loop, ``validate`` the offline dry run)."""

from zephyr.pipeline.runner import print_summary, run_pipeline

__all__ = ["print_summary", "run_pipeline"]
