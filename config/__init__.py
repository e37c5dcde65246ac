"""The config: schema, loader and validator (SPEC section 10)."""

from config._currencies import EXPONENTS, exponent, is_known
from config._diff import diff, redacted, warnings
from config._loader import ConfigError, LoadedConfig, load_file, load_text, parse
from config._schema import (
    BreakerConfig,
    ChannelConfig,
    ClientConfig,
    Config,
    FeeConfig,
    HealthConfig,
    InquiryConfig,
    PricingConfig,
    PromotionsConfig,
    RiskConfig,
    RoutingConfig,
    RuleConfig,
    RuleMatch,
    ServerConfig,
    StorageConfig,
    VelocityRule,
)

__all__ = [
    "EXPONENTS",
    "BreakerConfig",
    "ChannelConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "FeeConfig",
    "HealthConfig",
    "InquiryConfig",
    "LoadedConfig",
    "PricingConfig",
    "PromotionsConfig",
    "RiskConfig",
    "RoutingConfig",
    "RuleConfig",
    "RuleMatch",
    "ServerConfig",
    "StorageConfig",
    "VelocityRule",
    "diff",
    "exponent",
    "is_known",
    "load_file",
    "load_text",
    "parse",
    "redacted",
    "warnings",
]
