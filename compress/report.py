"""`compress report`: one base's variants as a Markdown table and a quality-vs-cost plot.

Quality is KL divergence to the base (lower is better; perplexity change is in the table).
Cost is measured throughput at 32 streams when the cards have it (higher is better), and
size on disk (lower is better). A variant is on the Pareto frontier when no other point is
at least as good on both axes and better on one.
"""

from __future__ import annotations

from pathlib import Path

from compress.schema import Card, ChatQuality, ModelRef


def pareto(points: list[tuple[float, float]], maximize_x: bool) -> list[int]:
    """Indices of non-dominated points; y (KL) is minimized, x maximized or minimized."""
    sign = -1 if maximize_x else 1

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ax, bx = sign * a[0], sign * b[0]
        return ax <= bx and a[1] <= b[1] and (ax < bx or a[1] < b[1])

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def with_interval(
    x: float | None, ci: list[float] | None, fmt: str, scale: float = 1, unit: str = ""
) -> str:
    """A point estimate and its 95 % interval, e.g. "+1.6 % [+1.1, +2.2]"; cards written
    before intervals existed show the point estimate alone."""
    if x is None:
        return "-"
    text = f"{x * scale:{fmt}}{unit}"
    if ci:
        text += f" [{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"
    return text


def _splits(table: list[dict]) -> str:
    """Which half of the eval text the rows were measured on (compress/texts.py)."""
    seen = {
        f"{r['split']} split ({r['windows']} windows)" if r["split"] else "whole eval text"
        for r in table
    }
    return (
        f"Quality measured on the {' and the '.join(sorted(seen))}; in brackets: bootstrap "
        "95 % intervals over windows, variant and base resampled together."
    )


def _chat(chat: ChatQuality) -> str:
    """Chat agreement cells: top-1 with its interval, then exact match (compress/chat_agreement)."""
    top1 = with_interval(chat.top1_agreement, chat.ci95.get("top1_agreement"), ".3f")
    exact = _num(chat.exact_match, ".2f")
    return f"{top1} | {exact}" + (f" @{chat.exact_match_tokens}" if exact != "-" else "")


def _chat_note(table: list[dict]) -> str:
    seen = {f"{c.prompts} {c.split} prompts" for r in table if (c := r["chat"]).prompts}
    if not seen:
        return "Chat agreement: not measured (built with --chat-prompts 0 or before it existed)."
    return (
        f"Chat agreement on the {' and '.join(sorted(seen))} of the chat prompt set: the share "
        "of the base's greedy answer tokens that are the variant's top-1 too (teacher-forced; "
        "95 % interval over prompts), and the share of prompts whose own greedy first N tokens "
        "equal the base's (exact @N)."
    )


def rows(variants: list[tuple[Path, Card]]) -> list[dict]:
    out = []
    for path, card in variants:
        q, size, speed = card.quality, card.size, card.speed
        v32, v1 = speed.variant.streams_32, speed.variant.streams_1
        out.append(
            {
                "variant": card.variant,
                "hash": path.name,
                "ppl": q.perplexity,
                "ppl_change": q.perplexity_change,
                "kl": q.kl_to_base,
                "top1": q.top1_agreement,
                "last_word": q.last_word_accuracy,
                "ci": q.ci95,
                "split": q.split,
                "windows": q.windows,
                "chat": q.chat,
                "mb": size.bytes / 1e6,
                "size_ratio": size.size_ratio,
                "tok_s_32": v32.tokens_per_s,
                "speedup_32": speed.speedup_32,
                "tok_s_1": v1.tokens_per_s,
                "ttft_1": v1.ttft_s_mean,
                "base": card.base,
                "base_ppl": q.base_perplexity,
                "base_last_word": q.base_last_word_accuracy,
                "base_tok_s_32": speed.base.streams_32.tokens_per_s,
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    base: ModelRef = table[0]["base"]
    lines = [
        f"# Variants of {base.name} ({base.fingerprint})",
        "",
        f"Base: perplexity {table[0]['base_ppl']:.2f}, last-word accuracy "
        f"{table[0]['base_last_word']:.2f}, {base.size_bytes / 1e6:.0f} MB, "
        f"{base.parameters / 1e6:.1f} M parameters.",
        "",
        _splits(table),
        "",
        _chat_note(table),
        "",
        "| variant | ppl | ppl vs base | KL to base | top-1 agree | last word | chat top-1 "
        "| chat exact | MB | size vs base "
        "| tok/s 32 streams | speed vs base | tok/s 1 stream | TTFT 1 stream (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(table, key=lambda r: r["kl"]):
        ppl_change = with_interval(
            r["ppl_change"], r["ci"].get("perplexity_change"), "+.1f", 100, " %"
        )
        lines.append(
            f"| {r['variant']} | {r['ppl']:.2f} "
            f"| {ppl_change} "
            f"| {with_interval(r['kl'], r['ci'].get('kl_to_base'), '.4f')} "
            f"| {with_interval(r['top1'], r['ci'].get('top1_agreement'), '.3f')} "
            f"| {r['last_word']:.2f} | {_chat(r['chat'])} | {r['mb']:.0f} "
            f"| {r['size_ratio'] * 100:.0f} % | {_num(r['tok_s_32'], '.0f')} "
            f"| {_num(r['speedup_32'], '.2f')}x | {_num(r['tok_s_1'], '.1f')} "
            f"| {_num(r['ttft_1'], '.3f')} |"
        )
    return "\n".join(lines).replace("| -x |", "| - |") + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_speed = [r for r in table if r["speedup_32"] is not None]
    panels = [("size vs base (lower is cheaper)", "size_ratio", False, table)]
    if with_speed:
        panels.insert(
            0, ("throughput vs base, 32 streams (higher is better)", "speedup_32", True, with_speed)
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    for ax, (xlabel, key, maximize, rs) in zip(axes[0], panels, strict=True):
        # The base is the point (1, 0): every variant is judged against it.
        pts = [(1.0, 0.0)] + [(r[key], r["kl"]) for r in rs]
        names = ["base"] + [r["variant"].removeprefix(f"{r['base'].name}-") for r in rs]
        front = pareto(pts, maximize)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="tab:gray", label="variant")
        fp = sorted((pts[i] for i in front), key=lambda p: p[0])
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "o-", c="tab:red", label="Pareto frontier")
        for (x, y), name in zip(pts, names, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("KL divergence to base (nats/token, lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{table[0]['base'].name}: quality vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(variants: list[tuple[Path, Card]], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = rows(variants)
    md, png = out / "report.md", out / "report.png"
    md.write_text(markdown(table) + f"\n![quality vs cost]({png.name})\n")
    plot(table, png)
    return md, png
