"""A limit on glibc's malloc arenas for the web server.

Each waitress thread that streams a download allocates in an arena of its
own, and glibc keeps an arena's pages after the download ends: a server that
has served big downloads from four threads stays ~20-25 MB larger than one
whose threads share the main arena, which gives memory back (measured by
scripts/bench_arenas.py; download speed the same). Set at start, before the
threads allocate: the same as MALLOC_ARENA_MAX in the environment, but true
however the server is started."""
import ctypes
import ctypes.util
import logging

logger = logging.getLogger('nightshift.server')

M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int) -> bool:
    """Ask glibc for at most `arenas` arenas (0: leave its default). False
    where the C library is not glibc or refuses."""
    if arenas <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = mallopt(M_ARENA_MAX, arenas) == 1
    if not done:
        logger.info('malloc arenas: the C library refused a limit of %d', arenas)
    return done
