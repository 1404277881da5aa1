"""Evaluation the way the field does it, file-compatible with its tools.

- ``mt_bench``: FastChat MT-Bench questions, answer files, answering rules and judge matches;
- ``alpaca``: AlpacaEval instructions, model_outputs.json, pairwise annotations;
- ``prefs``: preference accuracy and DPO implicit rewards on held-out pairs;
- ``judges``: judge prompt templates, verdict parsing, running judgments through any backend;
- ``scoring``: the score arithmetic (FastChat's show_result, AlpacaEval's win rate), free of I/O;
- ``runner``: many backend calls in flight at once, each result saved as it completes;
- ``records``: the append-only and atomic file writing that makes every stage resumable;
- ``stages``: the settings and one function per `zephyr eval` benchmark; ``cli``: the command.
"""
