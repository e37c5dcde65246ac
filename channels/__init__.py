"""Payment channels: the Channel protocol, adapters that speak to providers, and the
provider simulator."""

from channels._kinds import KIND_DEFAULTS, KindDefaults
from channels._protocol import (
    ACTION_ABANDONED,
    ACTION_EXPIRED,
    AttemptOutcome,
    Channel,
    ChannelResult,
    PaymentRequest,
    RefundOutcome,
    RefundRequest,
    RefundResult,
    SettlementItem,
    SettlementReportError,
    payment_outcome,
)

__all__ = ["ACTION_ABANDONED", "ACTION_EXPIRED", "KIND_DEFAULTS", "AttemptOutcome", "Channel", "ChannelResult", "KindDefaults", "PaymentRequest",
           "RefundOutcome", "RefundRequest", "RefundResult", "SettlementItem", "SettlementReportError", "payment_outcome"]
