"""Distillation data: teacher-pool generation, AI feedback, binarization into preferences, SFT-data cleaning.

- ``backends``: one generation interface over local transformers, OpenAI-compatible endpoints and vLLM;
- ``generate``: completions from a pool of teachers under sampled principles (`zephyr generate`);
- ``dialogue``: multi-turn dialogues between a user simulator (prompts in ``simulator``, per-turn checks
  in ``turns``) and a pool of teachers (`zephyr dialogue`);
- ``feedback``: a judge rates every completion on four aspects (`zephyr feedback`), with the prompts in
  ``rubrics`` and the strict reading of replies in ``verdicts``;
- ``binarize``: rated completions -> preference pairs and SFT/gen splits (`zephyr binarize`);
- ``votes``: the votes file of the compare page (`zephyr serve --votes`) and the pairs its votes make
  (`zephyr binarize --votes`);
- ``clean``: truecasing, disclaimer removal, length filters, decontamination and deduplication of SFT
  dialogues (`zephyr clean`), with the overlap measures in ``overlap``;
- ``records`` and ``runner``: the rows passed between stages, and the resumable row-by-row stage loop;
  ``shards``: one shard of a stage's rows per process (`--shard I/N`), and joining them (`merge-shards`).

Submodules are imported on use, so `zephyr --help` stays fast.
"""
