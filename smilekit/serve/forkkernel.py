"""Kernels forked from a preloaded process instead of started from scratch (``SMILEKIT_FORK_KERNELS``).

A kernel started the usual way is a new Python that imports ipykernel and then the app's libraries: about
0.8 CPU-seconds of every visit. Here the server starts once a *zygote*, ``python -m smilekit.serve.forkkernel
SOCKET``, which imports all of that and then waits on a Unix socket; each kernel is a ``fork()`` of it, so it
starts with everything imported and shares those memory pages with the zygote and every other kernel
(copy-on-write).

Fork safety: the zygote starts no thread, zmq context, event loop or inference session before it forks
(OpenBLAS's thread pool is kept at one thread by ``OPENBLAS_NUM_THREADS``, see ``Zygote.start``; the tests
check it has one thread): only the forking thread would survive in the child. Settings that libraries read
from the environment at import are the zygote's, not the kernel's (ipykernel's parent pid is given to it
on its command line instead). The child leaves the zygote's session (``setsid``, before
the zygote answers, so the server's interrupts and kills reach its own process group only), gets the
default signal handlers, stdin from ``/dev/null``, the kernel's environment and working folder, and runs
what ``python -m ipykernel_launcher`` runs; it never returns into the zygote's code. The zygote reaps its
children and sends each one's exit status on the connection that asked for it; ``ForkedProcess`` reads
it there, so the kernel manager polls, signals and waits for a forked kernel as for a ``Popen``. The
zygote exits when the server does (EOF on its stdin); its kernels then exit too (ipykernel's parent poller
watches the zygote).

``ForkProvisioner`` is jupyter_client's ``LocalProvisioner`` with only the launch changed; if the zygote
cannot start or answer, or the kernel command is not ipykernel's, it launches the usual way and logs why.
"""
from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import logging
import os
import pathlib
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from jupyter_client.provisioning import LocalProvisioner

#: imported by the zygote, so every kernel has them: the kernel (its debugger support alone is 0.1 CPU-s, imported
#: as the kernel starts), what the app's first cell imports and the database dialects it then loads
#: (not onnxruntime: importing it starts a thread, which a fork would lose; each kernel imports it itself)
PRELOAD = ("ipykernel.kernelapp", "ipykernel.debugger", "smilekit.app.ui", "sqlalchemy.dialects.sqlite",
           "sqlalchemy.dialects.postgresql")  # a module:function entry would also call the function
#: seconds a kernel launch waits for the zygote to be ready (its imports) before starting the usual way
START_TIMEOUT_S = 120
#: bytes of command line the zygote keeps for its kernels' (the kernel's command is shown there, as ``ps`` shows it)
COMMAND_ROOM = 1024
NAME = "smilekit-fork"
log = logging.getLogger(__name__)


# ---- the zygote's side ----------------------------------------------------------------------------------

def _threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1


def _show_command(cmd: list[str]) -> None:
    """Make ``ps`` (``/proc/self/cmdline``) show ``cmd``, written over the zygote's command line, which ``Zygote``
    pads for it (what ``setproctitle`` does): tools that find kernels by their command line find this one."""
    import ctypes

    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49 of proc(5))
    text = " ".join(cmd).encode() + b"\0"  # the area's last byte not NUL: Linux shows it up to the first NUL
    if len(text) < end - start:
        ctypes.memmove(start, text.ljust(end - start, b" "), end - start)


def _run_kernel(request: dict, ready_fd: int) -> None:  # pragma: no cover (runs in the forked child)
    """In the forked child: become the kernel ``request`` describes, and exit with its status."""
    code = 1
    try:
        os.setsid()
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _show_command(request["cmd"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"], JPY_PARENT_PID=str(os.getppid()))
        if "numpy.random" in sys.modules:  # each kernel its own random state, as a new process would have
            sys.modules["numpy.random"].seed()
        # ipykernel read JPY_PARENT_PID when the zygote imported it: the kernel watches the zygote, which
        # watches the server (a kernel whose parent goes exits)
        sys.argv = ["ipykernel_launcher", f"--IPKernelApp.parent_handle={os.getppid()}", *request["cmd"][3:]]
        from ipykernel import kernelapp

        app = kernelapp.IPKernelApp.instance()  # what launch_new_instance does, with one step between
        app.initialize()
        if "ipywidgets" in sys.modules:  # imported by the zygote, where there was no kernel to register its comm
            sys.modules["ipywidgets"].register_comm_target()  # targets with: a page's own widget messages need them
        app.start()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit does (IPython's history, logging)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def zygote(path: str, preload: list[str]) -> None:
    """Import the modules ``preload`` (and call ``module:function`` entries), then fork a kernel for each request on the Unix socket ``path`` until stdin closes.

    A request is one JSON line ``{"cmd", "env", "cwd"}`` (``cmd``: ``python -m ipykernel_launcher ...``); the answer is ``{"pid": ...}`` at once, then
    ``{"exit": code}`` (negative: killed by that signal) when the kernel has ended and been reaped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the server: the server stops the kernels, then us
    for name in preload:
        module, _, function = name.partition(":")
        loaded = importlib.import_module(module)
        if function:  # e.g. a model file loaded once here is shared by every kernel
            getattr(loaded, function)()
    if _threads() > 1:
        print(f"smilekit.serve.forkkernel: the zygote runs {_threads()} threads; only one survives in a kernel",
              file=sys.stderr)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # only now: a connection that succeeds finds the zygote ready
    listener.listen(64)
    try:
        _serve(listener, wake_r, wake_w)
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def _serve(listener: socket.socket, wake_r: int, wake_w: int) -> None:
    """The zygote's loop: fork on each request, reap ended kernels, return when stdin closes."""
    waiting: dict[int, socket.socket] = {}  # kernel pid -> the connection that asked for it
    selector = selectors.DefaultSelector()
    for fd in (listener, wake_r, sys.stdin):
        selector.register(fd, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the server is gone
            elif key.fileobj is listener:
                conn, _ = listener.accept()
                conn.settimeout(10)
                try:
                    request = json.loads(conn.makefile("rb").readline())
                except (OSError, ValueError):
                    conn.close()
                    continue
                ready_r, ready_w = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    for fd in (listener, conn, *waiting.values()):
                        fd.close()
                    for fd in (wake_r, wake_w, ready_r):
                        os.close(fd)
                    _run_kernel(request, ready_w)
                os.close(ready_w)
                os.read(ready_r, 1)  # the child has its own session: signals to its group reach it alone
                os.close(ready_r)
                waiting[pid] = conn
                try:
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:
                    pass
            else:
                os.read(wake_r, 4096)
        while waiting:  # reap every ended child, telling whoever asked for it
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


# ---- the server's side ----------------------------------------------------------------------------------

class ForkedProcess:
    """A forked kernel as ``LocalProvisioner`` uses a ``Popen``: ``pid``, ``poll``, ``wait``, ``send_signal``,
    ``kill``, ``terminate``. Its exit status comes from the zygote on ``conn``; if the zygote is gone before
    sending it, the kernel counts as ended once its pid is gone (exit code 1)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, conn: socket.socket, received: bytes = b""):
        self.pid, self._conn, self._buffer, self.returncode = pid, conn, received, None

    def poll(self) -> int | None:
        if self.returncode is None and self._conn is not None:
            if b"\n" not in self._buffer:
                try:
                    data = self._conn.recv(4096)
                except BlockingIOError:
                    return None
                except OSError:
                    data = b""
                self._buffer += data
                if data and b"\n" not in self._buffer:
                    return None
            if b"\n" in self._buffer:
                self.returncode = json.loads(self._buffer.split(b"\n")[0])["exit"]
            self._conn.close()
            self._conn = None
        if self.returncode is None:  # the zygote is gone without telling: the kernel is an orphan that init reaps
            try:
                os.kill(self.pid, 0)
                return None
            except ProcessLookupError:
                self.returncode = 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never signal a pid that may already be another process's
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """The server's zygote process, started at the first kernel launch and again if it died after working."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.path = ""
        self.broken = ""  # why forking is off for the rest of the server's life, if it is

    def start(self) -> None:
        folder = tempfile.mkdtemp(prefix="smilekit-zygote-")
        self.path = os.path.join(folder, "socket")
        from smilekit import settings

        # PYDEVD_DISABLE_FILE_VALIDATION: read as debugpy is imported, which would otherwise warn about frozen modules
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(settings.inference_threads()), SMILEKIT_PRELOAD=",".join(PRELOAD),
                   PYDEVD_DISABLE_FILE_VALIDATION="1")
        # run from that empty folder: smilekit and the rest are found as a kernel finds them (PYTHONPATH, site);
        # its command line names no module (tools count kernels by "ipykernel" in theirs)
        padding = " " * COMMAND_ROOM  # room for each kernel's command line (_show_command)
        self.proc = subprocess.Popen([sys.executable, "-m", "smilekit.serve.forkkernel", self.path, padding],
                                     stdin=subprocess.PIPE, env=env, cwd=folder)
        log.info("kernel zygote started (pid %d): kernels are forked from it (SMILEKIT_FORK_KERNELS)", self.proc.pid)

    def stop(self) -> None:
        """End the zygote (it ends by itself when the server does): its kernels then exit too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(30)

    async def _connect(self) -> socket.socket | None:
        """A connection to the zygote once it is ready, starting it if needed; None if it cannot be had."""
        if self.broken:
            return None
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                log.warning("kernel zygote exited with %s; starting a new one", self.proc.returncode)
            self.start()
        proc, deadline = self.proc, time.monotonic() + START_TIMEOUT_S
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(conn, self.path)
                return conn
            except OSError as error:
                conn.close()
                if proc.poll() is not None:
                    self.broken = f"the kernel zygote exited with {proc.returncode} before it was ready"
                elif time.monotonic() > deadline:
                    self.broken = f"the kernel zygote was not ready within {START_TIMEOUT_S} s ({error})"
                    proc.kill()
                if self.broken:
                    log.warning("forking kernels is off: %s; kernels are started the usual way", self.broken)
                    return None
            await asyncio.sleep(0.05)

    async def fork(self, cmd: list[str], env: dict[str, str], cwd: str) -> ForkedProcess | None:
        """A kernel forked for ``cmd`` (``python -m ipykernel_launcher ...``), or None (logged) if that failed."""
        conn = await self._connect()
        if conn is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(conn, json.dumps({"cmd": cmd, "env": env, "cwd": cwd}).encode() + b"\n")
            answer = b""
            while b"\n" not in answer:
                data = await asyncio.wait_for(loop.sock_recv(conn, 4096), 30)
                if not data:
                    raise ConnectionError("the zygote closed the connection")
                answer += data
            line, rest = answer.split(b"\n", 1)
            return ForkedProcess(json.loads(line)["pid"], conn, rest)
        except (OSError, ValueError, KeyError, asyncio.TimeoutError) as error:
            log.warning("the kernel zygote did not fork a kernel (%r); starting this one the usual way", error)
            conn.close()
            return None


_zygote = Zygote()


def _forkable(cmd: list[str], kwargs: dict) -> str:
    """Why kernel command ``cmd`` cannot be forked from the zygote ("" if it can)."""
    if cmd[1:3] != ["-m", "ipykernel_launcher"]:
        return f"not an ipykernel command: {cmd[:3]}"
    if os.path.realpath(shutil.which(cmd[0]) or cmd[0]) != os.path.realpath(sys.executable):
        return f"another Python: {cmd[0]}"
    if any(kwargs.get(stream) is not None for stream in ("stdin", "stdout", "stderr")) or kwargs.get("independent"):
        return "redirected standard streams"
    return ""


class ForkProvisioner(LocalProvisioner):
    """``LocalProvisioner`` whose kernels are forked from the zygote (started the usual way if that fails)."""

    async def launch_kernel(self, cmd: list[str], **kwargs):
        why = _forkable(cmd, kwargs)
        process = None if why else await _zygote.fork(cmd, kwargs.get("env") or dict(os.environ),
                                                      os.path.abspath(kwargs.get("cwd") or os.getcwd()))
        if process is None:
            if why:
                log.warning("kernel started the usual way: %s", why)
            return await super().launch_kernel(cmd, **kwargs)
        self.process, self.pid, self.pgid = process, process.pid, process.pid
        self.cwd = kwargs.get("cwd", pathlib.Path.cwd())
        return self.connection_info


def use_forked_kernels() -> None:
    """Make ``ForkProvisioner`` the default provisioner of this process's kernel managers (no install needed:
    registered in jupyter_client's provisioner factory, as its entry point in ``pyproject.toml`` would)."""
    from importlib.metadata import EntryPoint

    from jupyter_client.provisioning import KernelProvisionerFactory

    factory = KernelProvisionerFactory.instance()
    factory.provisioners[NAME] = EntryPoint(NAME, f"{__name__}:ForkProvisioner", "jupyter_client.kernel_provisioners")
    factory.default_provisioner_name = NAME


if __name__ == "__main__":
    if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.realpath(os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does: the kernel's imports must not come from the server's folder
    zygote(sys.argv[1], os.environ.pop("SMILEKIT_PRELOAD").split(","))
