"""The app's web server: Voilà, with admission control in front of the page (``scripts/serve`` runs it).

``python -m smilekit.serve.server notebooks/app.ipynb [voila options]`` is ``voila`` with four differences:
the page's handler first asks ``admission.Sessions`` for a place (a busy page with HTTP 503 when there
is none), the idle cull spares a kernel whose page is still loading, the preheated pool's size
defaults to ``settings.pool_size()``, and kernels are forked from a preloaded process
(``forkkernel``) when ``settings.fork_kernels()``. Page templates are compiled once, not once a page
(``keep_compiled_templates``).
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone

import jinja2
import tornado.ioloop
import tornado.web
from nbclient.util import ensure_async
from nbconvert.exporters.templateexporter import TemplateExporter
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler

from smilekit import settings
from smilekit.serve.admission import Sessions, busy_page, retry_after
from smilekit.serve.forkkernel import use_forked_kernels


class _KernelIdRecorder:
    """The kernel manager as one page request sees it, noting which kernel the request was given.

    A kernel handed to a visitor counts as active from that moment: a preheated one may have waited in the
    pool longer than the idle cull's timeout, and would otherwise be culled before its page connects."""

    def __init__(self, kernel_manager, sessions: Sessions):
        self._kernel_manager = kernel_manager
        self._sessions = sessions
        self.kernel_id: str | None = None

    def __getattr__(self, name):
        return getattr(self._kernel_manager, name)

    async def get_rendered_notebook(self, *args, **kwargs):
        result = await self._kernel_manager.get_rendered_notebook(*args, **kwargs)
        self._handed_over(result[2])
        return result

    async def start_kernel(self, *args, **kwargs):
        self._handed_over(await ensure_async(self._kernel_manager.start_kernel(*args, **kwargs)))
        return self.kernel_id

    def _handed_over(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self._kernel_manager.get_kernel(kernel_id).last_activity = datetime.now(timezone.utc)
        self._sessions.handed_over(kernel_id)


class AdmittingVoilaHandler(TornadoVoilaHandler):
    """Voilà's page handler, serving the app only to a visitor who gets a place."""

    _recorder: _KernelIdRecorder | None = None

    @property
    def kernel_manager(self):
        return self._recorder or self.settings["kernel_manager"]

    @tornado.web.authenticated
    async def get(self, path=None):
        if path:  # not the app's page (Voilà redirects it to a file): no kernel, no place needed
            return await super().get(path)
        sessions: Sessions = self.settings["smilekit_sessions"]
        if not await sessions.admit(self.settings["kernel_manager"]):
            seconds = retry_after()
            self.log.warning("busy: %d live sessions (limit %d), %d pages being prepared (limit %d): visitor asked to retry",
                             sessions.count(self.settings["kernel_manager"]), sessions.limit, sessions.preparing, sessions.max_starting)
            self.set_status(503)
            self.set_header("Retry-After", str(seconds))
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(busy_page(seconds))
            return
        self._recorder = _KernelIdRecorder(self.settings["kernel_manager"], sessions)
        try:
            await super().get(path)
        finally:
            sessions.served(self._recorder.kernel_id)


class SmileKitVoila(Voila):
    """Voilà serving the app's page through ``AdmittingVoilaHandler``."""

    def init_handlers(self):
        limit = settings.max_sessions()
        sessions = self.app.settings["smilekit_sessions"] = Sessions(limit, settings.max_starting())
        tornado.ioloop.PeriodicCallback(lambda: sessions.watch(self.kernel_manager), 1000).start()
        self._spare_loading_pages(sessions)
        self.log.info("SmileKit admits up to %d live sessions (SMILEKIT_MAX_SESSIONS), %d pages prepared at once "
                      "(SMILEKIT_MAX_STARTING)", limit, sessions.max_starting)
        return [(rule[0], AdmittingVoilaHandler, *rule[2:]) if rule[1] is TornadoVoilaHandler else rule
                for rule in super().init_handlers()]

    def _spare_loading_pages(self, sessions: Sessions) -> None:
        """The idle cull skips a kernel whose page may still be loading (``Sessions.loading``); a page's
        connection is noted as it happens, so a page closed within a second is not taken for a loading one."""
        cull, notify_connect = self.kernel_manager.cull_kernel_if_idle, self.kernel_manager.notify_connect

        def noting_connection(kernel_id):
            sessions.connected(kernel_id)
            return notify_connect(kernel_id)

        async def cull_unless_loading(kernel_id):
            if sessions.loading(kernel_id):
                return None
            return await cull(kernel_id)

        self.kernel_manager.cull_kernel_if_idle = cull_unless_loading
        self.kernel_manager.notify_connect = noting_connection


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept in memory, keyed by template, source checksum and what changes the compiled code
    (async or not, extensions)."""

    def __init__(self):
        self._code: dict[str, bytes] = {}

    def get_bucket(self, environment, name, filename, source):
        variant = f"{environment.is_async}|{sorted(environment.extensions)}|{name}"
        return super().get_bucket(environment, variant, filename, source)

    def load_bytecode(self, bucket) -> None:
        if bucket.key in self._code:
            bucket.bytecode_from_string(self._code[bucket.key])  # ignored if the source changed (checksum)

    def dump_bytecode(self, bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


def keep_compiled_templates() -> None:
    """Voilà makes a new nbconvert exporter, so a new jinja2 environment, for every page it prepares, and compiled
    the page's templates (about 14) again each time; every environment now shares one cache of compiled templates."""
    create = TemplateExporter._create_environment
    cache = _CompiledTemplates()

    def create_with_cache(self):
        environment = create(self)
        environment.bytecode_cache = cache
        return environment

    TemplateExporter._create_environment = create_with_cache


def main(argv: list[str] | None = None) -> None:
    """Run the server; options after the notebook are Voilà's (given ones win over the defaults here)."""
    argv = sys.argv[1:] if argv is None else argv
    if settings.fork_kernels():
        use_forked_kernels()
    keep_compiled_templates()
    SmileKitVoila.launch_instance([f"--pool_size={settings.pool_size()}", *argv])


if __name__ == "__main__":
    main()
