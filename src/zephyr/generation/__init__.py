"""Text and log-probabilities from a model, in one place: every stage that asks a model for something
(serving, teacher generation, AI feedback, evaluation) goes through this package.

- ``params``: ``SamplingParams`` (what to sample), ``Generation`` (what a backend returns), the errors;
- ``engine`` / ``scheduler``: the continuous-batching engine that runs a model on this machine;
- ``backends``: backend specs and the ``Backend`` interface, with the ``local`` backend on the engine;
  ``openai`` and ``vllm`` hold the other two backends;
- ``jobs``: the concurrent job runner that keeps a backend busy, with an explicit error policy.

It sits below the stages that use it and above models, chat templates and data: it imports none of
distill, train, evaluate, serve, export, report, pipeline or cli. Importing ``params`` or ``backends``
loads no torch; the engine and the SDKs load with the backend that needs them.
"""
