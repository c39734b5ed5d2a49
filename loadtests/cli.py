"""`kdgate loadtest`: TTFT load tests against any OpenAI-compatible server, and the measuring instruments.

    kdgate loadtest run --url http://127.0.0.1:8000 --concurrency 1 --concurrency 8 --requests 200 --out runs/lt
    kdgate loadtest sweep --url http://127.0.0.1:8000 --requests 100 --rates 4 --out runs/lt-sweep
    kdgate loadtest zero-server --port 8100 --ttft-ms 0 --itl-ms 2 --output-tokens 32
    kdgate loadtest passthrough --port 8101 --upstream http://127.0.0.1:8100
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help=__doc__.split("\n")[0])

_ENDPOINTS = ("chat", "completions")


def _plan(url, endpoint, model, header, api_key, prompts, prompt_count, input_words, max_tokens, temperature,
          logprobs, ignore_eos, requests, duration, warmup, grace, timeout, slo, seed, scrape_metrics, cost_settle):
    from loadtests import workload
    from loadtests.execute import Plan, discover_model, normalise_base_url
    from loadtests.gate import parse_slo
    from loadtests.runner import Bounds

    if endpoint not in _ENDPOINTS:
        raise ValueError(f"--endpoint {endpoint!r}: use chat or completions")
    base_url = normalise_base_url(url)
    headers = {}
    for item in header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: write 'Name: value'")
        headers[name.strip()] = value.strip()
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if prompts == "demo":
        chosen = workload.demo_prompts(prompt_count, seed)
    elif prompts == "synthetic":
        low, sep, high = input_words.partition(":")
        if not sep or not low.isdigit() or not high.isdigit():
            raise ValueError(f"--input-words {input_words!r}: write lo:hi, e.g. 20:200")
        chosen = workload.synthetic_prompts(prompt_count, int(low), int(high), seed)
    else:
        path = Path(prompts)
        if not path.is_file():
            raise ValueError(f"--prompts {prompts!r}: use demo, synthetic or a JSONL file that exists")
        chosen = workload.jsonl_prompts(path)
    if model is None:
        model = discover_model(base_url, headers)
        if model is None:
            typer.echo(f"warning: {base_url}/models listed no model (unreachable?); sending model `default` — "
                       "pass --model", err=True)
            model = "default"
    request = workload.BodySettings(model=model, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs,
                                    ignore_eos=ignore_eos, seed=seed)
    bounds = Bounds(requests=requests, duration=duration, warmup=warmup, grace=grace, timeout=timeout)
    return Plan(base_url, endpoint, headers, request, chosen, bounds, parse_slo(slo), seed, scrape_metrics,
                cost_settle)


def _common(function):
    """The options `run` and `sweep` share (target, prompts, request, bounds, SLO)."""
    import functools
    import inspect

    shared = [
        ("url", str, typer.Option(..., help="the server: http://host:port (…/v1 is added)")),
        ("endpoint", str, typer.Option("chat", help="chat or completions")),
        ("model", str | None, typer.Option(None, help="default: the first model /v1/models lists")),
        ("header", list[str], typer.Option([], help="'Name: value' (repeat), e.g. 'x-kdgate-force: teacher'")),
        ("api_key", str | None, typer.Option(None, envvar="KDGATE_LOADTEST_API_KEY", help="sent as a bearer token")),
        ("prompts", str, typer.Option("demo", help="demo, synthetic, or a JSONL file of {messages} or {prompt}")),
        ("prompt_count", int, typer.Option(500, min=1, help="demo/synthetic prompts to draw")),
        ("input_words", str, typer.Option("20:200", help="synthetic prompt length range in words, lo:hi")),
        ("max_tokens", int, typer.Option(64, min=1, help="max_tokens per request")),
        ("temperature", float, typer.Option(0.0, min=0.0, max=2.0)),
        ("logprobs", int | None, typer.Option(None, min=0, help="ask for this many top logprobs per token")),
        ("ignore_eos", bool, typer.Option(False, help="vLLM: generate exactly max_tokens")),
        ("requests", int | None, typer.Option(None, min=1, help="measured requests per run (after warm-up)")),
        ("duration", float | None, typer.Option(None, min=0.001, help="seconds of sending per run")),
        ("warmup", int, typer.Option(0, min=0, help="first requests of each run left out of the statistics")),
        ("grace", float, typer.Option(5.0, min=0.0, help="seconds a request may outlive --duration")),
        ("timeout", float, typer.Option(60.0, min=0.001, help="per-request timeout, seconds")),
        ("slo", str | None, typer.Option(None, help="goodput SLO, e.g. ttft=200ms,tpot=50ms")),
        ("seed", int, typer.Option(0)),
        ("scrape_metrics", bool, typer.Option(True, help="read the server's TTFT histogram and, from a gateway "
                                                         "with priced backends, its cost counters from /metrics "
                                                         "before and after")),
        ("cost_settle", float, typer.Option(30.0, min=0.0, help="at most this many seconds after a run, wait for "
                                            "the gateway's cost counters to stop moving for 3 s (its shadow work "
                                            "finishing) before reading them")),
    ]
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values()) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=option)
        for name, kind, option in shared]

    @functools.wraps(function)
    def wrapper(**kwargs):
        common = {name: kwargs.pop(name) for name, _, _ in shared}
        return function(common=common, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[p for p in parameters if p.name != "common"])
    return wrapper


@app.command("run")
@_common
def run_command(
    common: dict,
    concurrency: list[int] = typer.Option([], help="closed loop: requests in flight (repeat for several runs)"),
    rate: list[float] = typer.Option([], help="open loop: arrivals per second (repeat for several runs)"),
    arrivals: str = typer.Option("poisson", help="open loop: poisson, gamma or constant"),
    burstiness: float = typer.Option(1.0, help="gamma shape: < 1 burstier than Poisson, > 1 smoother"),
    max_concurrency: int | None = typer.Option(None, min=1, help="open loop: cap on requests in flight"),
    ramp_up: float = typer.Option(0.0, min=0.0, help="seconds of linear ramp-up"),
    label: str | None = typer.Option(None, help="name of the run in reports (default: the shape)"),
    out: Path | None = typer.Option(None, file_okay=False, help="write <run>.json, <run>-ttft-cdf.png, runs.csv"),
    fail_if: str | None = typer.Option(None, help="exit 1 if any term holds, e.g. 'p99_ttft>300ms,error_rate>0.01'"),
) -> None:
    """Measure TTFT, TPOT, ITL and e2e at each load shape, overall and per route.

    Example:  kdgate loadtest run --url http://127.0.0.1:8000 --concurrency 1 --concurrency 16 --requests 150
    """
    from loadtests.execute import execute
    from loadtests.gate import failed, parse_fail_if
    from loadtests.report import print_summary
    from loadtests.runner import Shape

    try:
        conditions = parse_fail_if(fail_if)
        plan = _plan(**common)
        if arrivals not in ("poisson", "gamma", "constant"):
            raise ValueError(f"--arrivals {arrivals!r}: use poisson, gamma or constant")
        shapes = [Shape(concurrency=c, ramp_up=ramp_up) for c in concurrency] + [
            Shape(rate=r, arrivals=arrivals, burstiness=burstiness, max_concurrency=max_concurrency, ramp_up=ramp_up)
            for r in rate]
        if not shapes:
            raise ValueError("give a load shape: --concurrency N and/or --rate R")
        if label and len(shapes) > 1:
            raise ValueError("--label names one run; drop it when giving several shapes")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    breaches = []
    for shape in shapes:
        name = label or shape.label
        built = execute(plan, shape, name, out)
        print_summary(built["summary"], f"{name} → {plan.url} ({plan.request.model})")
        breaches += [f"{name}: {text}" for text in failed(conditions, built["summary"])]
    if out is not None:
        typer.echo(f"reports written to {out}/")
    if breaches:
        typer.echo("FAILED: " + "; ".join(breaches), err=True)
        raise typer.Exit(1)


@app.command("sweep")
@_common
def sweep_command(
    common: dict,
    rates: int = typer.Option(4, min=1, help="open-loop rates between synchronous and throughput"),
    max_concurrency: int = typer.Option(64, min=1, help="requests in flight for the throughput run"),
    out: Path = typer.Option(Path("runs/loadtest-sweep"), file_okay=False),
) -> None:
    """Synchronous, throughput, then Poisson rates between: sweep.png and one runs.csv row per run.

    Example:  kdgate loadtest sweep --url http://127.0.0.1:8000 --rates 3 --requests 300 --out runs/lt-sweep
    """
    from loadtests.execute import sweep
    from loadtests.report import print_summary

    try:
        plan = _plan(**common)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    sweep(plan, rates, max_concurrency, out,
          on_run=lambda built: print_summary(built["summary"], f"{built['label']} → {plan.url}"))
    typer.echo(f"sweep written to {out}/ (runs.csv, sweep.png, one JSON per run)")


@app.command("zero-server")
def zero_server(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8100),
    model: str = typer.Option("zero"),
    ttft_ms: float = typer.Option(0.0, min=0.0),
    itl_ms: float = typer.Option(0.0, min=0.0),
    output_tokens: int = typer.Option(32, min=1),
    top_logprobs: int = typer.Option(5, min=0, help="most alternatives per token it returns when asked"),
    slots: int = typer.Option(0, min=0, help="answers generated at once, the rest waiting (a batch's capacity, as "
                              "vLLM's max_num_seqs); 0: no limit"),
) -> None:
    """A zero-work OpenAI-compatible server: the instrument that isolates a gateway's own overhead.

    Example:  kdgate loadtest zero-server --port 9000 --output-tokens 32 --itl-ms 1
    """
    import uvicorn

    from loadtests.zero import ZeroServer, ZeroSettings

    settings = ZeroSettings(model=model, ttft_ms=ttft_ms, itl_ms=itl_ms, output_tokens=output_tokens,
                            top_logprobs=top_logprobs, slots=slots)
    uvicorn.run(ZeroServer(settings), host=host, port=port, log_level="warning", access_log=False)


@app.command("passthrough")
def passthrough(
    upstream: str = typer.Option(..., help="the server to forward to, e.g. http://127.0.0.1:8100"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8101),
) -> None:
    """A bare FastAPI + httpx proxy that streams bytes unchanged: the floor any Python gateway can reach.

    Example:  kdgate loadtest passthrough --port 9001 --upstream http://127.0.0.1:9000
    """
    import uvicorn

    from loadtests.passthrough import create_app

    uvicorn.run(create_app(upstream), host=host, port=port, log_level="warning", access_log=False)
