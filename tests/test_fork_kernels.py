"""Kernels forked from the preloaded zygote (smilekit/serve/forkkernel.py): they run code, are interrupted, restarted
and shut down as kernels started the usual way are, leave no process behind, and the usual way takes over
when the zygote cannot start. The first tests drive jupyter_client's kernel manager as Voilà does; the last
ones run the server as scripts/serve does."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import psutil
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager as AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory

from conftest import VoilaServer
from helpers import run_coroutine
from smilekit.serve import forkkernel
from smilekit import settings

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"), reason="needs fork and /proc")

#: bounds every wait on a loaded 2-core machine; not a performance target
WAIT_S = 120


@pytest.fixture
def fork_provisioner(monkeypatch):
    """Kernel managers of this process use ForkProvisioner, with a zygote of their own (stopped afterwards)."""
    factory = KernelProvisionerFactory.instance()
    monkeypatch.setattr(factory, "default_provisioner_name", factory.default_provisioner_name)
    monkeypatch.setitem(factory.provisioners, forkkernel.NAME, None)
    forkkernel.use_forked_kernels()
    zygote = forkkernel.Zygote()
    monkeypatch.setattr(forkkernel, "_zygote", zygote)
    yield zygote
    zygote.stop()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.2)


async def _run(client, code: str, expression: str) -> str:
    """Run ``code`` in the kernel, then evaluate ``expression`` there: its repr."""
    msg_id = client.execute(code, user_expressions={"x": expression})
    reply = await client.get_shell_msg(timeout=WAIT_S)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok", reply["content"]
    return reply["content"]["user_expressions"]["x"]["data"]["text/plain"]


async def _started(km: AsyncKernelManager):
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    await client.wait_for_ready(timeout=WAIT_S)
    return client


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def test_a_forked_kernel_runs_code_is_interrupted_restarted_and_shut_down_without_leftovers(fork_provisioner):
    async def scenario():
        km = AsyncKernelManager(transport="ipc")
        client = await _started(km)
        assert isinstance(km.provisioner, forkkernel.ForkProvisioner)
        assert isinstance(km.provisioner.process, forkkernel.ForkedProcess), "the kernel was not forked"
        zygote_pid, kernel_pid = fork_provisioner.proc.pid, km.provisioner.pid
        assert psutil.Process(kernel_pid).ppid() == zygote_pid
        assert "ipykernel_launcher" in psutil.Process(kernel_pid).cmdline()  # found as a kernel by ps and the tests

        found = await _run(client, "import os, sys", "(6 * 7, os.getsid(0) == os.getpid(), 'smilekit.app.ui' in sys.modules, os.getcwd())")
        assert found == repr((42, True, True, os.getcwd()))  # its own session; the app already imported

        client.execute("import time; time.sleep(60)")
        await asyncio.sleep(1)
        await km.interrupt_kernel()
        reply = await client.get_shell_msg(timeout=WAIT_S)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert await _run(client, "", "'still here'") == "'still here'"

        await km.restart_kernel(now=True)
        assert km.provisioner.pid != kernel_pid and not psutil.pid_exists(kernel_pid)
        client.stop_channels()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=WAIT_S)
        assert await _run(client, "y = 1 + 1", "y") == "2"
        new_pid = km.provisioner.pid

        await km.shutdown_kernel()
        client.stop_channels()
        assert not psutil.pid_exists(new_pid)
        _wait_until(lambda: not _children(zygote_pid), "the zygote reaped its kernels (no zombie)")

    run_coroutine(scenario())


def test_a_killed_kernel_reports_its_signal_and_the_restarter_replaces_it(fork_provisioner):
    async def scenario():
        km = AsyncKernelManager(transport="ipc")
        client = await _started(km)
        km.start_restarter()
        killed = km.provisioner.pid
        process = km.provisioner.process
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while km.provisioner is None or km.provisioner.pid == killed or not await km.is_alive():
            assert time.monotonic() < deadline, "the killed kernel was not replaced"
            await asyncio.sleep(0.2)
        assert process.poll() == -signal.SIGKILL  # the exit status, as the zygote reaped it
        assert isinstance(km.provisioner.process, forkkernel.ForkedProcess)
        client.stop_channels()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=WAIT_S)
        assert await _run(client, "", "'back'") == "'back'"
        km.stop_restarter()
        await km.shutdown_kernel(now=True)
        client.stop_channels()

    run_coroutine(scenario())


def test_kernels_start_the_usual_way_when_the_zygote_cannot_start(fork_provisioner, monkeypatch, caplog):
    monkeypatch.setattr(forkkernel, "PRELOAD", ("smilekit.no_such_module",))  # the zygote's imports fail

    async def scenario():
        km = AsyncKernelManager(transport="ipc")
        with caplog.at_level(logging.WARNING, logger=forkkernel.__name__):
            client = await _started(km)
        assert not isinstance(km.provisioner.process, forkkernel.ForkedProcess)
        assert psutil.Process(km.provisioner.pid).ppid() == os.getpid()
        assert "forking kernels is off" in caplog.text
        assert await _run(client, "", "'usual'") == "'usual'"
        await km.shutdown_kernel(now=True)
        client.stop_channels()

    run_coroutine(scenario())
    assert fork_provisioner.broken


def test_a_new_zygote_replaces_one_that_died(fork_provisioner):
    async def scenario():
        first = AsyncKernelManager(transport="ipc")
        client = await _started(first)
        old_zygote = fork_provisioner.proc
        old_zygote.kill()
        old_zygote.wait()
        # its kernel follows it (ipykernel's parent poller), and is seen as ended
        _wait_until(lambda: first.provisioner.process.poll() is not None, "the orphaned kernel ended")
        client.stop_channels()
        second = AsyncKernelManager(transport="ipc")
        client = await _started(second)
        assert isinstance(second.provisioner.process, forkkernel.ForkedProcess)
        assert psutil.Process(second.provisioner.pid).ppid() == fork_provisioner.proc.pid != old_zygote.pid
        assert await _run(client, "", "'again'") == "'again'"
        await second.shutdown_kernel(now=True)
        await first.shutdown_kernel(now=True)
        client.stop_channels()

    run_coroutine(scenario())


def test_fork_kernels_setting(monkeypatch):
    monkeypatch.delenv("SMILEKIT_FORK_KERNELS", raising=False)
    assert settings.fork_kernels() == os.uname().sysname.startswith("Linux")
    monkeypatch.setenv("SMILEKIT_FORK_KERNELS", "0")
    assert not settings.fork_kernels()
    monkeypatch.setenv("SMILEKIT_FORK_KERNELS", "1")
    assert settings.fork_kernels()


def _zygote_of(server: VoilaServer) -> psutil.Process | None:
    return next((p for p in psutil.Process(server.proc.pid).children() if "smilekit.serve.forkkernel" in p.cmdline()), None)


@pytest.mark.slow
@pytest.mark.parametrize("fork", ["1", "0"])
def test_the_server_kernels_are_forked_restarted_when_killed_and_leave_nothing(fork, tmp_path):
    server = VoilaServer(tmp_path, None, {"SMILEKIT_FORK_KERNELS": fork, "SMILEKIT_MODELS_DIR": str(tmp_path / "models")},
                         ready_path="voila/static/favicon.ico")
    try:
        _wait_until(lambda: server.kernels(), "the preheated kernel")
        (kernel,) = server.kernels()
        zygote = _zygote_of(server)
        if fork == "1":
            assert zygote is not None and kernel.ppid() == zygote.pid
            assert len(zygote.threads()) == 1  # nothing but the forking thread, so nothing lost in a fork
        else:
            assert zygote is None and kernel.ppid() == server.proc.pid
        connection_file = kernel.cmdline()[-1]
        kernel.kill()  # the server's restarter starts a new kernel under the same id (same connection file)

        def replaced():
            return [k for k in server.kernels() if k.pid != kernel.pid and k.cmdline()[-1] == connection_file]

        _wait_until(replaced, "a new kernel for the killed one")
        if fork == "1":
            assert replaced()[0].ppid() == zygote.pid
        everything = [server.proc.pid] + [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    finally:
        server.close()

    _wait_until(lambda: not any(psutil.pid_exists(pid) for pid in everything), "every process of the server gone (no zombie)")
