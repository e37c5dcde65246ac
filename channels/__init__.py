"""Payment channels: the Channel protocol, adapters that speak to providers, and the
provider simulator."""

from channels._kinds import KIND_DEFAULTS, KindDefaults
from channels._protocol import (
    AttemptOutcome,
    Channel,
    ChannelResult,
    PaymentRequest,
    RefundOutcome,
    RefundRequest,
    RefundResult,
    SettlementItem,
    SettlementReportError,
)

__all__ = ["KIND_DEFAULTS", "AttemptOutcome", "Channel", "ChannelResult", "KindDefaults", "PaymentRequest",
           "RefundOutcome", "RefundRequest", "RefundResult", "SettlementItem", "SettlementReportError"]
