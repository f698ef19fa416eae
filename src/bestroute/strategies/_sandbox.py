"""Program of thought: run a model-written Python program in a sandbox and read what it prints.

The program runs in a separate Python process (isolated mode, no site packages, an empty
environment, a fresh temporary directory as its working directory) that, before running it,
sets its own CPU, memory, file-size and core-dump limits and installs an audit hook (PEP 578)
that refuses network access, writing, deleting or renaming files, starting or signalling
processes, loading native code, tracing and changing the limits. An audit hook cannot be
removed once installed, and this one holds no state a program could change (its tables are
constants of its code, and no name leads to it). The wall-clock limit and the output limit are enforced from outside (the process is
killed). This keeps a model's mistakes (an endless loop, a huge list, a stray ``open(..., "w")``,
a ``urllib.request.urlopen``) from harming the gateway; it is not a boundary against a
determined attacker who controls the model, for whom the gateway belongs in a container or VM
without network.
"""

import asyncio
import contextlib
import re
import signal
import sys
import tempfile
from dataclasses import dataclass

from pydantic import Field

from .._section import Section


class SandboxLimits(Section):
    """What a program may use. ``wall_s`` and ``output_chars`` are enforced from outside."""

    cpu_s: int = Field(default=2, ge=1, le=60, description="CPU seconds")
    wall_s: float = Field(default=5.0, gt=0, le=120, description="seconds before the process is killed")
    memory_mb: int = Field(default=256, ge=64, le=4096, description="address space in MB")
    output_chars: int = Field(default=10_000, ge=1, le=1_000_000, description="most characters it may print")


@dataclass(frozen=True)
class ProgramResult:
    """What a program printed (``output``), or why it has no answer (``error``, one line)."""

    output: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# Runs in the sandboxed process: its limits, then the audit hook, then the program read from
# stdin. Every table the hook reads is a constant of its code, so nothing reachable can widen it.
_BOOTSTRAP = r"""
import resource, sys
cpu, memory = int(sys.argv[1]), int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
source = sys.stdin.read()

def hook(event, args):
    if event == "open":
        mode, flags = args[1], args[2] or 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & 0o3103:
            raise PermissionError("the sandbox refused writing a file")
        return
    if event == "import":
        if args[0].split(".")[0] in (
            "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess",
            "multiprocessing", "_multiprocessing", "asyncio", "selectors", "select", "mmap", "pty",
            "signal", "_signal", "fcntl", "gc", "_thread", "threading", "resource", "pdb", "bdb",
        ):
            raise PermissionError("the sandbox refused importing " + args[0])
        return
    for prefix, what in (
        ("socket", "network access"), ("urllib.Request", "network access"), ("http.client", "network access"),
        ("ftplib", "network access"), ("smtplib", "network access"), ("poplib", "network access"),
        ("imaplib", "network access"), ("nntplib", "network access"), ("telnetlib", "network access"),
        ("subprocess", "starting a process"), ("os.system", "starting a process"),
        ("os.exec", "starting a process"), ("os.posix_spawn", "starting a process"),
        ("os.spawn", "starting a process"), ("os.fork", "starting a process"),
        ("os.forkpty", "starting a process"), ("os.startfile", "starting a process"),
        ("webbrowser", "starting a process"), ("os.kill", "signalling a process"),
        ("os.killpg", "signalling a process"), ("signal", "signalling a process"),
        ("os.remove", "deleting a file"), ("os.rmdir", "deleting a file"), ("shutil", "changing files"),
        ("os.rename", "renaming a file"), ("os.mkdir", "writing a file"), ("os.link", "writing a file"),
        ("os.symlink", "writing a file"), ("os.truncate", "writing a file"), ("os.chmod", "changing a file"),
        ("os.chown", "changing a file"), ("os.chdir", "changing its directory"), ("os.utime", "changing a file"),
        ("os.putenv", "changing the environment"), ("os.unsetenv", "changing the environment"),
        ("ctypes", "loading native code"), ("resource", "changing its limits"),
        ("sys.settrace", "tracing"),
        ("sys.setprofile", "tracing"), ("sys.setrecursionlimit", "changing its limits"),
    ):
        if event == prefix or event.startswith(prefix + "."):
            raise PermissionError("the sandbox refused " + what)

sys.addaudithook(hook)
del hook, resource
exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
"""

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_STDERR_BYTES = 64_000


def program_text(reply: str) -> str:
    """The program in a model's reply: its last fenced Python block (a block the reply ends
    inside, cut off by the token limit, counts), else the whole reply."""
    blocks = _FENCE.findall(reply)
    return blocks[-1] if blocks else reply


async def run_program(source: str, limits: SandboxLimits) -> ProgramResult:
    """Run ``source`` in the sandbox: what it printed (stripped), or the reason it has no answer.
    Never raises for anything the program does; cancelling it kills the process."""
    with tempfile.TemporaryDirectory(prefix="bestroute-program-") as workdir:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _BOOTSTRAP,
            str(limits.cpu_s),
            str(limits.memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env={},
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        # UTF-8 is at most 4 bytes a character: a program over the output limit is stopped once
        # that many bytes have come, never read into memory without bound.
        limit = 4 * limits.output_chars
        errors = asyncio.create_task(_read_at_most(process.stderr, _STDERR_BYTES))
        try:
            process.stdin.write(source.encode("utf-8", "replace"))
            with contextlib.suppress(ConnectionError):  # it may exit before reading all of it
                await process.stdin.drain()
            process.stdin.close()
            async with asyncio.timeout(limits.wall_s):
                stdout = await _read_at_most(process.stdout, limit + 1)
                if len(stdout) > limit:
                    return ProgramResult(error=f"the program printed more than {limits.output_chars} characters")
                stderr = await errors
                await process.wait()
        except TimeoutError:
            return ProgramResult(error=f"the program ran over its {limits.wall_s:g} s time limit")
        finally:
            errors.cancel()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                # asyncio's wait() returns once the pipes are read to their end too; with the
                # process gone, what is left is at most a pipe buffer.
                await asyncio.gather(_read_at_most(process.stdout, sys.maxsize), _drain(process.stderr, errors))
                await process.wait()
    output, status = stdout.decode("utf-8", "replace"), process.returncode
    assert status is not None  # waited for above
    if len(output) > limits.output_chars:
        return ProgramResult(error=f"the program printed more than {limits.output_chars} characters")
    if status == 0:
        output = output.strip()
        return ProgramResult(output=output) if output else ProgramResult(error="the program printed nothing")
    return ProgramResult(error=_failure(status, stderr.decode("utf-8", "replace"), limits))


async def _drain(stream: asyncio.StreamReader, reader: "asyncio.Task[bytes]") -> None:
    """Read ``stream`` to its end once ``reader`` (cancelled) has let go of it."""
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await _read_at_most(stream, sys.maxsize)


async def _read_at_most(stream: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = await stream.read(min(65_536, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _failure(status: int, stderr: str, limits: SandboxLimits) -> str:
    """One line saying why the program failed: the limit it hit, or its exception's last line."""
    if status == -signal.SIGXCPU or status == -signal.SIGKILL:
        return f"the program used more than {limits.cpu_s} s of CPU"
    if status == -signal.SIGXFSZ:
        return "the sandbox refused writing a file"
    if status < 0:
        return f"the program was stopped by signal {-status}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {status}"
    if last.startswith("MemoryError"):
        return f"the program used more than {limits.memory_mb} MB of memory"
    if last.startswith("PermissionError: the sandbox refused"):
        return last.removeprefix("PermissionError: ")
    return f"the program failed: {last[:300]}"
