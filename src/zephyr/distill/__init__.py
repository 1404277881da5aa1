"""Distillation data: teacher-pool generation, AI feedback, binarization into preferences, SFT-data cleaning.

- ``backends``: one generation interface over local transformers, OpenAI-compatible endpoints and vLLM;
- ``generate``: completions from a pool of teachers under sampled principles (`zephyr generate`);
- ``feedback``: a judge rates every completion on four aspects (`zephyr feedback`), with the prompts in
  ``rubrics`` and the strict reading of replies in ``verdicts``;
- ``binarize``: rated completions -> preference pairs and SFT/gen splits (`zephyr binarize`);
- ``clean``: truecasing, disclaimer removal, length filters, decontamination and deduplication of SFT
  dialogues (`zephyr clean`), with the overlap measures in ``overlap``;
- ``records`` and ``runner``: the rows passed between stages, and the resumable row-by-row stage loop.

Submodules are imported on use, so `zephyr --help` stays fast.
"""
