"""Evaluation results as plain-text tables, the way `zephyr eval` prints them."""

from __future__ import annotations


def table(headers: list[str], rows: list[list]) -> str:
    """A plain text table, first column left-aligned, the rest right-aligned."""
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def show_mt_bench(result: dict) -> str:
    if "answers" in result:
        return f"Answers written to {result['answers']}. Pass --judge to grade them."
    if result["mode"] == "single":
        return _show_single(result)
    rows = sorted(result["models"].values(), key=lambda m: -m["win_rate_adjusted"])
    head = f"MT-Bench pairwise ({result.get('judge', 'judge')}), baseline {result.get('baseline') or 'none'}"
    body = table(
        ["model", "win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted"],
        [
            [m["model"], m["win"], m["loss"], m["tie"], m["win_rate"], m["loss_rate"], m["win_rate_adjusted"]]
            for m in rows
        ],
    )
    errors = result.get("n_errors", 0)
    tail = f"\n{errors} pair(s) where a judge verdict could not be read were left out." if errors else ""
    return f"{head}\n{body}{tail}\nJudgments: {result['judgment_file']}"


def _show_single(result: dict) -> str:
    models = sorted(result["models"].values(), key=lambda m: -(m["score"] or 0))
    head = f"MT-Bench single grading by {result.get('judge', 'the judge')}"
    scores = table(
        ["model", "turn 1", "turn 2", "MT-Bench", "rated", "no rating"],
        [
            [m["model"], m["turns"].get("1"), m["turns"].get("2"), m["score"], m["n_valid"], m["n_invalid"]]
            for m in models
        ],
    )
    out = [head, scores]
    categories = [c for c in _category_order(models)]
    if categories:
        out += [
            "",
            table(
                ["category"] + [m["model"] for m in models],
                [[c] + [m["categories"].get(c) for m in models] for c in categories],
            ),
        ]
    unrated = [(m["model"], x) for m in models for x in m["invalid"]]
    if unrated:
        shown = ", ".join(f"{model} q{x['question_id']} turn {x['turn']}" for model, x in unrated[:20])
        more = f" and {len(unrated) - 20} more" if len(unrated) > 20 else ""
        out += [
            "",
            f"{len(unrated)} judgment(s) had no [[rating]] and were left out, as FastChat does: {shown}{more}",
        ]
    out.append(f"Judgments: {result['judgment_file']}")
    return "\n".join(out)


def _category_order(models: list[dict]) -> list[str]:
    from zephyr.evaluate.mt_bench import CATEGORY_ORDER

    seen = {c for m in models for c in m["categories"]}
    return [c for c in CATEGORY_ORDER if c in seen] + sorted(seen - set(CATEGORY_ORDER))


def show_alpaca(result: dict) -> str:
    if "outputs" in result:
        return "Outputs written to " + ", ".join(result["outputs"]) + ". Pass --judge to annotate them."
    models = sorted(result["models"].items(), key=lambda kv: -(kv[1]["win_rate"] or 0))
    body = table(
        ["model", "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"],
        [
            [
                name,
                m["win_rate"],
                m["standard_error"],
                m["n_wins"],
                m["n_wins_base"],
                m["n_draws"],
                m["n_total"],
                m["avg_length"],
            ]
            for name, m in models
        ],
    )
    out = [f"AlpacaEval win rates ({result['source']})", body]
    for name, m in models:
        out.append(
            f"{name}: reference {', '.join(m['reference'])}; annotator {', '.join(m['annotator'])}"
            + (f"; {m['n_missing']} annotation(s) with no preference left out" if m["n_missing"] else "")
        )
    return "\n".join(out)


def show_prefs(result: dict) -> str:
    lines = [
        f"Preference accuracy of {result['model']} on {result['data']}"
        + (f" (reference {result['ref_model']})" if result["ref_model"] else "")
    ]
    lines += [
        f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}" for k, v in result["metrics"].items()
    ]
    lines.append(f"Written to {result['output']}")
    return "\n".join(lines)


def show_rules(result: dict) -> str:
    rows = sorted(result["models"].values(), key=lambda m: -m["satisfied"])
    names = list(rows[0]["per_rule"]) if rows else []
    body = table(
        ["model", "satisfied", "+-se", "mean score", "n", "mean words", *names],
        [
            [m["generator"], m["satisfied"], m["satisfied_se"], m["mean_score"], m["n"], m["mean_words"]]
            + [m["per_rule"].get(name) for name in names]
            for m in rows
        ],
    )
    return f"Rule satisfaction on {result['prompts']} (rules {result['rules']})\n{body}"
