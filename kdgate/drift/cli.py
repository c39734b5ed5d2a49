"""The `kdgate demo drift` command."""

from __future__ import annotations

from pathlib import Path

import typer

from distill.demo.cli import check_model_folders
from runtime.demo import DEMO_PRELAUNCH_STUDENT_DIR, DEMO_TEACHER_DIR


def drift(
    out: Path = typer.Option(Path("runs/drift"), file_okay=False, help="logs, the store, drift.json and drift.png"),
    teacher: Path = typer.Option(DEMO_TEACHER_DIR, exists=True, file_okay=False, help="the teacher's model folder: the "
                                 "gateway's teacher, the replay cache's and the report's"),
    student: Path = typer.Option(DEMO_PRELAUNCH_STUDENT_DIR, exists=True, file_okay=False, help="the "
                                 "pre-launch student's model folder (the teacher's tokenizer; `kdgate demo "
                                 "prelaunch-student` makes one): the gateway serves it first and the job re-distils "
                                 "it"),
    teacher_target: float = typer.Option(0.36, min=0.0, max=1.0, help="the pre-launch student's handoff share on "
                                         "usual tickets (the gateway's `routing.handoff.target_teacher_fraction`, "
                                         "the trainer's refit target); 0.36 was measured for the demo pair: "
                                         "measure it for another (benchmarks/teacher_share.py)"),
    handoff_floor: float | None = typer.Option(None, min=0.0, max=1.0, help="the handoff's floor "
                                               "(`routing.handoff.min_prob`, default 0.9): a student token less "
                                               "likely hands the answer to the teacher; set it so that the share on "
                                               "usual tickets is --teacher-target"),
    rate: float = typer.Option(2.0, min=0.1, help="client requests per second"),
    usual_s: float = typer.Option(90.0, min=0.0, help="seconds of usual traffic before the launch"),
    launch_share: float = typer.Option(0.5, min=0.0, max=1.0, help="share of launched-product tickets after it"),
    after_s: float = typer.Option(150.0, min=0.0, help="seconds of traffic after the promotion"),
    max_wait_s: float = typer.Option(900.0, min=1.0, help="longest wait from the launch to a promotion"),
    train_steps: int = typer.Option(800, min=1, help="the re-distillation job's training steps"),
    train_override: list[str] | None = typer.Option(None, help="KEY=VALUE, repeat: an override of the job's recipe "
                                                    "(distill/configs/redistill.yaml, sized for the demo student), "
                                                    "e.g. optim.lr=3e-4 or batch_size=8 for another pair"),
    replay_cache: Path | None = typer.Option(None, exists=True, file_okay=False, help="a teacher cache of the "
                                             "pre-launch student's own distillation data for the job to rehearse "
                                             "(`kdgate demo prelaunch-student`'s OUT-work/cache), made by --teacher; "
                                             "default: the teacher answers 2,000 pre-launch tickets into "
                                             "OUT/replay-cache"),
    min_records: int = typer.Option(450, min=1, help="the records the job waits for before it trains (the trainer's "
                                    "`dataset.min_records`)"),
    gather_wait_s: float = typer.Option(300.0, min=0.0, help="how long the job waits for --min-records (the "
                                        "trainer's `dataset.gather_wait_s`): records come as fast as the pair "
                                        "serves, so a slow pair needs longer; under --max-wait-s"),
    golden_examples: int | None = typer.Option(None, min=1, help="the gate's golden set: its first N tickets "
                                               "(default: all 500)"),
    threads: int = typer.Option(1, min=1, help="torch CPU threads of each process that runs a model (the teacher "
                                "making the replay cache, the gateway, the job, the offline evaluation); they share "
                                "the CPUs, so 1 unless the machine has cores to spare"),
) -> None:
    """Close the re-distillation loop on a drift: launch, alert, job, gate, promotion, with no call by hand.

    Products launch; the drift alert fires; the trainer re-distils from the records; the gate admits; the
    gateway promotes. Prints a before/after table and draws the timeline. Needs Debian's prometheus and
    prometheus-alertmanager.

    Says a status line (phase, elapsed time, the alert, the job's step and progress) whenever 20 s pass
    without news, names the job's log when it starts, and prints the command that watches the trainer's jobs.

    Example:  kdgate demo drift --out runs/drift --threads 1
    Example:  kdgate demo drift --teacher runs/pair/teacher --student runs/pair/student-prelaunch --teacher-target 0.4
    """
    from distill.config import load_config
    from distill.online.settings import TrainSettings
    from kdgate.drift.run import DriftSettings, check_replay_from, run
    from kdgate.drift.stack import MissingTool
    from runtime.tokenizer_hash import tokenizer_hash

    check_model_folders(teacher=teacher, student=student)
    try:  # the job's recipe with these overrides, checked now rather than when the job starts after the drift
        load_config(TrainSettings().config, list(train_override or []))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--train-override") from None
    if gather_wait_s >= max_wait_s:
        raise typer.BadParameter(f"the job would still be gathering records when the run stops waiting for a "
                                 f"promotion ({gather_wait_s:g} s against --max-wait-s {max_wait_s:g} s): give a "
                                 "shorter wait, or a longer --max-wait-s for the training and the gate after it",
                                 param_hint="--gather-wait-s")
    if tokenizer_hash(teacher) != tokenizer_hash(student):
        raise typer.BadParameter(f"{student} has another tokenizer than the teacher {teacher}: the teacher's scores "
                                 "of its tokens would mean other tokens; give a student with the teacher's tokenizer",
                                 param_hint="--student")
    if replay_cache is not None:
        replay_cache = replay_cache.resolve()
        try:
            check_replay_from(replay_cache, teacher)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--replay-cache") from None
    try:
        run(DriftSettings(out=out, teacher=teacher, student=student, teacher_target=teacher_target,
                          handoff_floor=handoff_floor, rate=rate,
                          usual_s=usual_s, launch_share=launch_share, after_s=after_s, max_wait_s=max_wait_s,
                          train_steps=train_steps, train_overrides=tuple(train_override or ()),
                          replay_from=replay_cache, min_records=min_records, gather_wait_s=gather_wait_s,
                          golden_examples=golden_examples,
                          threads=threads),
            say=typer.echo)
    except MissingTool as error:
        typer.echo(f"kdgate: {error}", err=True)
        raise typer.Exit(2) from None
