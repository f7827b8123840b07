"""Why the gate refused a request, as typed errors. The gate knows no HTTP: ``status`` is the number the
ledger records for the refusal (and serving answers with), and serving turns every refusal into an OpenAI
error body and its headers in one function (``serving.errors.to_openai``).

Budget and rate-limit refusals are :class:`~.budgets.BudgetExceeded` and :class:`~.rate_limits.RateLimited`,
which carry the figures their headers need.
"""

from __future__ import annotations


class Refusal(Exception):
    """A request the gate does not let through: ``message`` for the client, ``code`` stable for machines."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class InvalidKey(Refusal):
    status, type = 401, "invalid_request_error"

    def __init__(self, message: str = "invalid or revoked API key: pass 'Authorization: Bearer lk_...' with a "
                                      "key from `leaninfer keys create`", code: str = "invalid_api_key"):
        super().__init__(message, code)


class NotAllowed(Refusal):
    """A valid key asking for what its policy doesn't grant (a model, an admin route)."""

    status, type = 403, "permission_error"


class UnknownModel(Refusal):
    status = 404

    def __init__(self, name: str, served: list[str]):
        super().__init__(f"the model {name!r} does not exist; served models: {', '.join(served)}",
                         "model_not_found", "model")


class WrongTask(Refusal):
    def __init__(self, name: str, task: str, wanted: str):
        super().__init__(f"model {name!r} is a {task} model; this endpoint needs a {wanted} model",
                         "wrong_task", "model")


class GovernanceUnavailable(Refusal):
    """The store (or the shared state in it) failed while the gate needed it: the request is not let through
    unchecked (a 503; the failure is logged with its cause and counted)."""

    status, type = 503, "server_error"

    def __init__(self, what: str, cause: BaseException):
        super().__init__(f"the server could not {what} ({type(cause).__name__}): retry later, or ask the "
                         "operator to check the store", "governance_unavailable")
