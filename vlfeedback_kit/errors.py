"""Errors the user can act on."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad input, bad option); the CLI prints it without a traceback."""


def hub_error(action: str, err: BaseException) -> UserError:
    """One line naming the Hub endpoint and why ``action`` failed there: offline mode, unreachable, 401/403, 404."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    first_line = str(err).splitlines()[0] if str(err) else "no answer"
    if isinstance(err, OfflineModeIsEnabled):
        cause = "offline mode is on (HF_HUB_OFFLINE=1); unset it to reach the Hub"
    elif isinstance(err, LocalEntryNotFoundError):
        cause = "not in the local cache, and the Hub could not be asked (offline mode or no connection)"
    elif isinstance(err, RevisionNotFoundError):
        cause = "404, revision not found; check --revision"
    elif isinstance(err, RepositoryNotFoundError):
        cause = (
            f"{status or 404}, repository not found (or private and the token cannot see it); check the name, "
            "HF_TOKEN or `hf auth login`"
        )
    elif isinstance(err, RemoteEntryNotFoundError):
        cause = "404, file not found in the repository"
    elif isinstance(err, HfHubHTTPError) and status in (401, 403):
        cause = f"{status}, not authorized; set HF_TOKEN or run `hf auth login` with access to the repo"
    elif isinstance(err, HfHubHTTPError):
        cause = f"HTTP {status}: {first_line}"
    elif isinstance(err, (ConnectionError, TimeoutError)) or any(
        cls.__name__ == "TransportError" for cls in type(err).__mro__
    ):
        cause = f"unreachable ({type(err).__name__}: {first_line}); check the network or HF_ENDPOINT"
    else:
        cause = f"{type(err).__name__}: {first_line}"
    return UserError(f"{action} at {constants.ENDPOINT}: {cause}")


def is_hub_error(err: BaseException) -> bool:
    """Whether ``err`` came from talking to the Hub: an HTTP status, offline mode, or the connection itself."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    hub_errors = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    return isinstance(err, hub_errors) or any(cls.__name__ == "TransportError" for cls in type(err).__mro__)
