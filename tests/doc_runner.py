"""Running a page's runnable blocks in a copy of the repository, as one bash script: servers started and waited for,
ports replaced by free ones, nothing left running (how and why: tests/test_docs_run.py)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.doc_blocks import Block
from tests.doc_commands import is_server, program, split_commands

PRELUDE = r"""set -euo pipefail
DOC_TEST_BLOCK='(before the first block)'

doc_test_stop() {  # $1: a port; stops the server started on it (its whole session), if any
    local file="$DOC_TEST_DIR/server-$1.pid" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file"); rm -f "$file"
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 150); do kill -0 -- "-$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

doc_test_serve() {  # $1: the port, $2: the command line; started in a session of its own, waited for
    doc_test_stop "$1"
    echo "doc-test: starting \`$2\` (port $1)"
    ( setsid bash -c "$2" >"$DOC_TEST_DIR/server-$1.log" 2>&1 </dev/null & echo $! >"$DOC_TEST_DIR/server-$1.pid" )
    local pid waited=0
    pid=$(cat "$DOC_TEST_DIR/server-$1.pid")
    until curl -sf -o /dev/null "http://127.0.0.1:$1/v1/models"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "doc-test: \`$2\` exited before answering; its log:"; tail -n 40 "$DOC_TEST_DIR/server-$1.log"
            return 1
        fi
        if [ "$waited" -ge 1800 ]; then
            echo "doc-test: \`$2\` did not answer in 180 s; its log:"; tail -n 40 "$DOC_TEST_DIR/server-$1.log"
            return 1
        fi
        sleep 0.1; waited=$((waited + 1))
    done
}

doc_test_gateway() {  # the demo gateway for a `serve` block, unless one is up
    curl -sf -o /dev/null "http://127.0.0.1:$KDGATE_PORT/v1/models" || doc_test_serve "$KDGATE_PORT" "./dev serve"
}

doc_test_wait() {  # `wait`, but a background job that failed fails the block
    local pid
    for pid in $(jobs -p); do wait "$pid"; done
}

doc_test_exit() {
    local status=$? file
    [ "$status" -eq 0 ] || printf '%s\n' "$DOC_TEST_BLOCK" >"$DOC_TEST_DIR/failed-block"
    for file in "$DOC_TEST_DIR"/server-*.pid; do
        [ -e "$file" ] || continue
        file=${file##*/server-}; doc_test_stop "${file%.pid}"
    done
    for file in $(jobs -p); do kill "$file" 2>/dev/null || true; done
    echo "doc-test: <<< [$SECONDS s] exit $status"
    exit "$status"
}
trap doc_test_exit EXIT
"""


def port_map(runnable: list[Block], free_port) -> dict[int, int]:
    """Every port the runnable blocks name, and 8000 (the gateway's default), to a free one."""
    ports = {8000}
    for block in runnable:
        ports |= {int(port) for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d{4,5})\b|--port (\d{4,5})\b",
                                                   block.shrunk()) for port in port if port}
    return {port: free_port() for port in sorted(ports)}


def with_ports(text: str, ports: dict[int, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"\b(127\.0\.0\.1|localhost):{old}\b", rf"\g<1>:{new}", text)
        text = re.sub(rf"--port {old}\b", f"--port {new}", text)
    return text


def logical_lines(text: str) -> list[str]:
    """The text cut at each newline that ends a command line: not one inside quotes or after a backslash."""
    lines, start, quote, index = [], 0, None, 0
    while index < len(text):
        char = text[index]
        if char == "\\" and quote != "'":
            index += 2
            continue
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t\n;&|"):
            index = text.find("\n", index)  # a comment: its quotes are prose
            if index < 0:
                break
            continue
        elif char == "\n":
            lines.append(text[start:index + 1])
            start = index + 1
        index += 1
    return [*lines, text[start:]] if text[start:] else lines


def script_of(block: Block, ports: dict[int, int]) -> str:
    """One runnable block as bash: shrunk, ports replaced, gateway lines started and waited for."""
    text = with_ports(block.shrunk(), ports)
    if block.language == "python":
        body = f".venv/bin/python - <<'DOC_TEST_PYTHON'\n{text}DOC_TEST_PYTHON\n"
        return ("doc_test_gateway\n" if block.marker.kind == "serve" else "") + body
    out = ["doc_test_gateway\n"] if block.marker.kind == "serve" else []
    for line in logical_lines(text):
        commands = split_commands(line)
        servers = [command for command in commands if is_server(program(command.words)[1])]
        if servers:
            if len(commands) != 1:
                raise ValueError(f"{block.where}: put `{line.strip()}` on a line of its own: the runner starts the "
                                 "gateway lines itself")
            argv = program(servers[0].words)[1]
            port = argv[argv.index("--port") + 1] if "--port" in argv else "$KDGATE_PORT"
            command = re.sub(r"\s*&\s*$", "", re.sub(r"\\\n\s*", " ", strip_comment(line)).strip())
            out.append(f'doc_test_serve "{port}" {shlex.quote(command)}\n')
        elif re.fullmatch(r"(.*;\s*)?wait\s*(#.*)?\n?", line):
            out.append(re.sub(r"\bwait\s*(#.*)?$", "doc_test_wait", line.rstrip("\n")) + "\n")
        else:
            out.append(line if line.endswith("\n") else line + "\n")
    return "".join(out)


def strip_comment(line: str) -> str:
    """The line without its trailing `# comment` (a `#` outside quotes that starts a word)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
    return line.rstrip()


def page_script(page_blocks: list[Block], ports: dict[int, int]) -> str:
    parts = [PRELUDE]
    for block in page_blocks:
        if block.marker and block.marker.runs:
            parts.append(f"\nDOC_TEST_BLOCK={shlex.quote(block.where)}\n"
                         f"echo \"doc-test: >>> [$SECONDS s] \"{shlex.quote(block.where)}\n")
            parts.append(script_of(block, ports))
    return "".join(parts)


def copy_repository(root: Path, destination: Path) -> None:
    """The tracked files as they are in the working tree (what a fresh clone plus these edits holds), and `.venv`
    as a link to the repository's."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        source = root / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    (destination / ".venv").symlink_to((root / ".venv").resolve(), target_is_directory=True)


def venv_is_current(root: Path) -> bool:
    """`./dev` reinstalls when pyproject.toml changed since its stamp; in a copy that would install the copy into
    the shared .venv, so the runner refuses instead. The `dev` stamp (`./dev test` writes it) covers every verb."""
    stamp = root / ".venv" / ".kdgate-installed-dev"
    want = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return stamp.is_file() and stamp.read_text().strip() == want


@dataclass
class PageRun:
    returncode: int
    output: str
    failed_block: str | None
    server_logs: dict[str, str]
    seconds: float

    def report(self, lines: int = 60) -> str:
        tail = "\n".join(self.output.splitlines()[-lines:])
        logs = "".join(f"\n--- {name} (last lines) ---\n" + "\n".join(text.splitlines()[-30:])
                       for name, text in self.server_logs.items())
        return (f"exit {self.returncode} in block {self.failed_block or '?'} after {self.seconds:.0f} s\n"
                f"--- output (last {lines} lines) ---\n{tail}{logs}")


def run_page(page_blocks: list[Block], copy: Path, work: Path, timeout: float, free_port) -> PageRun:
    """Run one page's runnable blocks in `copy` (a copy of the repository); `work` holds the script and logs."""
    ports = port_map([block for block in page_blocks if block.marker and block.marker.runs], free_port)
    script = work / "page.sh"
    script.write_text(page_script(page_blocks, ports))
    gateway = ports[8000]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")} | {
        "PYTHONPATH": str(copy), "PYTHONUNBUFFERED": "1", "DOC_TEST_DIR": str(work), "HF_HUB_OFFLINE": "1",
        "KDGATE_PORT": str(gateway), "KDGATE_GATEWAY_URL": f"http://127.0.0.1:{gateway}"}
    log = work / "output.log"
    started = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(["bash", str(script)], cwd=copy, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the script's EXIT trap stops its servers
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            returncode = -1
            with log.open("a") as note:
                note.write(f"\ndoc-test: the page ran past its {timeout:.0f} s limit\n")
        finally:
            stop_everything(process, work)
    failed = work / "failed-block"
    return PageRun(returncode, log.read_text(errors="replace"),
                   failed.read_text().strip() if failed.is_file() else None,
                   {path.name: path.read_text(errors="replace") for path in sorted(work.glob("server-*.log"))},
                   time.monotonic() - started)


def stop_everything(process: subprocess.Popen, work: Path) -> None:
    """Whatever the script left: its own process group (background jobs) and the servers' sessions."""
    groups = [process.pid] + [int(path.read_text()) for path in work.glob("server-*.pid") if path.read_text().strip()]
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.wait(timeout=10)
