"""`zephyr chat MODEL`: multi-turn chat in the terminal with streamed replies."""

from __future__ import annotations

from zephyr.cli.serve import add_model_arguments, build_engine, served_name

DESCRIPTION = (
    "Commands: /reset, /system, /save, /exit.\nExample: zephyr chat smollm2-135m-instruct --system 'You are terse.' --temperature 0.7"
    "\n         zephyr chat runs/demo/sft --prompt 'Give me three tips for writing a clear email.'"
)


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, help="System prompt for the conversation")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95, help="Nucleus sampling mass (default: 0.95)")
    parser.add_argument("--max-tokens", type=int, default=512, help="Longest reply in tokens (default: 512)")
    parser.add_argument("--seed", type=int, default=None, help="Sampling seed, for repeatable replies")
    parser.add_argument("--stop", action="append", default=[], help="A stop string (repeatable)")
    parser.add_argument(
        "--prompt",
        default=None,
        help="Ask this one message, print the streamed reply and exit (no interactive session)",
    )


def run(args, extra) -> int:
    import sys

    from zephyr.generation.params import SamplingParams
    from zephyr.serve.terminal import ChatSession, chat_loop

    if sys.stdin.isatty():
        import readline  # noqa: F401 - importing it gives input() line editing and history
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    with build_engine(args) as engine:
        session = ChatSession(engine, params, system=args.system, model_name=served_name(args.model))
        if args.prompt is not None:
            session.reply(args.prompt)
        else:
            chat_loop(session)
    return 0
