"""Every setting SmileKit takes from the environment, with its default, in one place.

Each is read when asked for (not at import), so a test or a notebook can change the
environment first. Defaults are inside the project, wherever the code runs from (papermill,
JupyterLab, the command line); ``SMILEKIT_MODELS_DIR`` is taken from the project root too.

| variable | what | default |
|---|---|---|
| ``SMILEKIT_DATA`` | the face data folder | ``data/`` |
| ``SMILEKIT_CACHE`` | cached face crops | ``outputs/cache/`` |
| ``SMILEKIT_DB_URL`` | the feedback database | SQLite file ``outputs/feedback.db`` |
| ``SMILEKIT_MODEL`` | the checkpoint to serve | the newest in the models folder, else the shipped one |
| ``SMILEKIT_MODELS_DIR`` | where promoted models go | ``outputs/models/`` |
| ``SMILEKIT_THREADS`` | inference threads per app kernel | 1 |
| ``SMILEKIT_POOL_SIZE`` | preheated kernels the server keeps ready | 1 |
| ``SMILEKIT_MAX_SESSIONS`` | live sessions before new visitors are asked to retry | from memory |
| ``SMILEKIT_REPLICAS`` | servers sharing this machine's memory (``scripts/serve-replicas`` sets it) | 1 |
| ``SMILEKIT_MAX_STARTING`` | pages prepared at once before new visitors are asked to retry | 4 per core |
| ``SMILEKIT_RETRY_AFTER`` | seconds after which the busy page loads the app again, plus up to as many at random | 2 |
| ``SMILEKIT_FORK_KERNELS`` | the server forks kernels from a preloaded process (``smilekit/serve/forkkernel.py``) | on where ``os.fork`` exists |
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: probability of smiling from which a face counts as smiling, for a checkpoint that stores no ``threshold`` of its own
DEFAULT_THRESHOLD = 0.5
#: a face whose probability is within this of the model's threshold is marked "Not sure — tell us?" on its card,
#: to draw clicks where the model hesitates (benchmarks/bench_learning.py: so far as useful per click as random faces)
UNSURE_BAND = 0.15


def project_path(path) -> Path:
    """``path`` as given if absolute, else relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def _path(variable: str, default: str) -> Path:
    """The variable's path as given, else ``default`` in the project."""
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else ROOT / default


def data_root() -> Path:
    """The face data folder (``SMILEKIT_DATA``)."""
    return _path("SMILEKIT_DATA", "data")


def cache_dir() -> Path:
    """Where face crops are cached (``SMILEKIT_CACHE``)."""
    return _path("SMILEKIT_CACHE", "outputs/cache")


def db_url() -> str:
    """The feedback database's URL (``SMILEKIT_DB_URL``), by default an SQLite file in ``outputs/``."""
    return os.environ.get("SMILEKIT_DB_URL") or f"sqlite:///{ROOT / 'outputs' / 'feedback.db'}"


def models_dir(path=None) -> Path:
    """Where promoted models live and the app looks for the newest: ``path``, else ``SMILEKIT_MODELS_DIR``."""
    return project_path(path or os.environ.get("SMILEKIT_MODELS_DIR") or "outputs/models")


def model_path() -> Path | None:
    """The checkpoint named by ``SMILEKIT_MODEL``, or None."""
    return Path(os.environ["SMILEKIT_MODEL"]).expanduser() if os.environ.get("SMILEKIT_MODEL") else None


def inference_threads() -> int:
    """Threads an app kernel gives inference (``SMILEKIT_THREADS``): one face needs ~1 ms on one thread, while
    two threads on a busy 2-core server wait on each other; each browser session has its own kernel anyway."""
    return int(os.environ.get("SMILEKIT_THREADS") or 1)


def served_by_voila() -> bool:
    """True in a kernel that Voilà started for a visitor (or preheated for one)."""
    return "VOILA_BASE_URL" in os.environ


#: pages prepared at once per core: with forked kernels a visit costs the server about 0.3-0.4 CPU-seconds; 4 a core
#: with a 2 s retry served 20 visitors at once with page ready p95 5.2 s, against 10.7 s with 2 a core and a 5 s retry
#: (benchmarks/bench_load.py --protocol, docs/serving.md)
STARTING_PER_CORE = 4
#: the busy page loads the app again after this many seconds, plus up to as many again at random (5 before the
#: protocol-driven load test showed the wait itself made most of page ready's p95 for a crowd)
RETRY_AFTER_S = 2
#: memory kept for a session, what its kernel may need while it handles the largest upload (200-280 MB); at rest a
#: session holds 72-82 MB proportional and costs no CPU, so memory, not cores, bounds how many stay open (CPU goes
#: to page starts, which ``max_starting`` bounds; benchmarks/bench_load.py --protocol, docs/serving.md)
SESSION_MB = 300
#: memory kept for the server, the database and the system
RESERVED_MB = 1024


def pool_size() -> int:
    """Preheated kernels the server keeps ready, the app notebook already run in them (``SMILEKIT_POOL_SIZE``)."""
    return max(0, int(os.environ.get("SMILEKIT_POOL_SIZE") or 1))


def fork_kernels() -> bool:
    """Whether the server forks each kernel from a process that has the app's libraries imported
    (``SMILEKIT_FORK_KERNELS``: 1 / 0); on by default where the platform can fork."""
    value = os.environ.get("SMILEKIT_FORK_KERNELS", "").strip().lower()
    return hasattr(os, "fork") and (value in ("1", "true", "yes", "on") if value else sys.platform.startswith("linux"))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_starting() -> int:
    """Pages the server prepares at once before asking new visitors to retry (``SMILEKIT_MAX_STARTING``);
    by default ``STARTING_PER_CORE`` per core, so that a crowd arriving together is served a few at a time
    instead of every page waiting for all the others."""
    return max(1, int(os.environ.get("SMILEKIT_MAX_STARTING") or STARTING_PER_CORE * _cores()))


def retry_after_s() -> int:
    """Seconds after which the busy page loads the app again, before the random spread (``SMILEKIT_RETRY_AFTER``)."""
    return max(1, int(os.environ.get("SMILEKIT_RETRY_AFTER") or RETRY_AFTER_S))


def replicas_on_machine() -> int:
    """Servers that share this machine's memory (``SMILEKIT_REPLICAS``, which ``scripts/serve-replicas`` gives each
    of its replicas), 1 by default; servers in containers with a memory limit each have their own."""
    return max(1, int(os.environ.get("SMILEKIT_REPLICAS") or 1))


def _cgroup_memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """The tightest memory limit, in bytes, on this process's control group and the groups above it (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``: a container's or a pod's limit), None if there is none."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    places = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2, one hierarchy
            places.append((cgroup_root, path, "memory.max"))
        elif "memory" in controllers.split(","):
            places.append((cgroup_root / "memory", path, "memory.limit_in_bytes"))
    limits = []
    for mount, path, name in places:
        folder = mount / path.lstrip("/")
        for group in (folder, *folder.parents):
            try:
                value = (group / name).read_text().strip()
            except OSError:
                value = ""
            if value.isdigit() and int(value) < 2**60:  # v1 writes "no limit" as a number close to 2**63
                limits.append(int(value))
            if group == mount:
                break
    return min(limits, default=None)


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_mb() -> int:
    """Memory this server may use, in MB: the machine's, or its container's limit if lower, shared equally by
    ``replicas_on_machine`` servers."""
    physical = _physical_memory()
    limit = _cgroup_memory_limit()
    return min(physical, limit or physical) // 2**20 // replicas_on_machine()


def max_sessions() -> int:
    """Live sessions the server takes before asking new visitors to retry (``SMILEKIT_MAX_SESSIONS``); by
    default as many ``SESSION_MB`` sessions as ``memory_mb`` holds beyond ``RESERVED_MB``, at least 1."""
    if os.environ.get("SMILEKIT_MAX_SESSIONS"):
        return max(1, int(os.environ["SMILEKIT_MAX_SESSIONS"]))
    return max(1, (memory_mb() - RESERVED_MB) // SESSION_MB)
