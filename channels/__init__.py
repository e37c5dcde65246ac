"""Payment channels: the Channel protocol, adapters that speak to providers, and the
provider simulator."""

from channels._protocol import AttemptOutcome, Channel, ChannelResult, PaymentRequest

__all__ = ["AttemptOutcome", "Channel", "ChannelResult", "PaymentRequest"]
