"""Exit codes of ``sovereign-weights`` and the errors that map to them (one home for both)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a fetch, an upload or a verification failed
EXIT_USAGE = 2  # bad input, or a request the policy refuses (endpoint not allowed)
EXIT_NO_ROOM = 3  # the cache cannot hold the revision, even after any allowed eviction
EXIT_BUSY = 4  # another warmer held the revision's lock past --lock-timeout


class WeightsError(Exception):
    """An error ``sovereign-weights`` reports as one line, exiting with :attr:`exit_code`."""

    exit_code = EXIT_FAILED


class UsageError(WeightsError):
    exit_code = EXIT_USAGE


class EndpointRefused(UsageError):
    """The object-store endpoint is not in the allowed list; raised before any request."""


class NoRoom(WeightsError):
    exit_code = EXIT_NO_ROOM


class LockTimeout(WeightsError):
    exit_code = EXIT_BUSY


class VerificationFailed(WeightsError):
    """A file still did not match the manifest after every allowed refetch."""
