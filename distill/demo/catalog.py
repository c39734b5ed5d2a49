"""The demo task's world: products, issue kinds, tiers, urgency cues and the rules over them.

Everything the ground truth depends on is declared here, so the rules can be read in one place:

- queue    = QUEUE_TABLE[product group][issue kind]
- priority = base level of the strongest *non-negated* urgency cue, moved by the customer's tier, then by the
             issue kind for paying tiers (three factors at once, see `priority_for`)
- reply    = a fixed sentence that copies the customer's first name, the *current* order number (not the phone,
             account or previous-order numbers next to it) and the product's canonical name (not the alias or
             misspelling the customer typed)
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUES = ("repairs", "tech-support", "billing", "subscriptions", "accounts", "logistics", "returns")
PRIORITIES = ("P1", "P2", "P3", "P4")
ISSUE_KINDS = ("defect", "billing", "access", "shipping", "return")
TIERS = ("free", "plus", "pro", "enterprise")


@dataclass(frozen=True)
class Product:
    name: str
    group: str
    aliases: tuple[str, ...]


PRODUCTS: tuple[Product, ...] = (
    # Ordered by popularity: the generator draws them with Zipf-like weights, so the tail is rare.
    Product("SmartHub Pro", "hardware", ("smarthub pro", "Smart Hub Pro", "smarthub", "SmrtHub Pro")),
    Product("CloudVault", "software", ("cloudvault", "Cloud Vault", "the vault app", "CloudVualt")),
    Product("StreamPlus", "subscription", ("streamplus", "Stream+", "Stream Plus", "StreamPlsu")),
    Product("Aero Router", "hardware", ("aero router", "the Aero", "AeroRouter", "Areo Router")),
    Product("TaskPilot", "software", ("taskpilot", "Task Pilot", "TaskPilto")),
    Product("Sync Cable", "accessory", ("sync cable", "the USB-C cable", "SyncCable", "Snyc Cable")),
    Product("Pulse Camera", "hardware", ("pulse cam", "Pulse Cam", "PulseCamera", "Plse Camera")),
    Product("FitTrack Premium", "subscription", ("fittrack", "FitTrack", "Fit Track Premium", "FitTrak Premium")),
    Product("LedgerLite", "software", ("ledgerlite", "Ledger Lite", "LedgerLight")),
    Product("Travel Case", "accessory", ("travel case", "the carry case", "TravelCase", "Travle Case")),
    Product("Nova Speaker", "hardware", ("nova speaker", "the Nova", "NovaSpeaker", "Nvoa Speaker")),
    Product("MailDesk", "software", ("maildesk", "Mail Desk", "MailDsk")),
    Product("NewsDaily", "subscription", ("newsdaily", "News Daily", "the daily news sub", "NewsDialy")),
    Product("Echo Doorbell", "hardware", ("echo doorbell", "the doorbell", "EchoBell", "Ecko Doorbell")),
    Product("Screen Guard", "accessory", ("screen guard", "screen protector", "ScreenGuard", "Scren Guard")),
    Product("PhotoForge", "software", ("photoforge", "Photo Forge", "PhotoFrge")),
    Product("GameStation Pass", "subscription", ("gamestation pass", "GS Pass", "Game Station Pass")),
    Product("Lumen Lamp", "hardware", ("lumen lamp", "the smart lamp", "LumenLamp", "Lumn Lamp")),
    Product("Power Bank", "accessory", ("power bank", "the battery pack", "PowerBank", "Powr Bank")),
    Product("CodeNest", "software", ("codenest", "Code Nest", "CodeNets")),
    Product("Orbit Tracker", "hardware", ("orbit tracker", "the Orbit tag", "OrbitTracker", "Orbt Tracker")),
    Product("CloudRadio", "subscription", ("cloudradio", "Cloud Radio", "CloudRaido")),
)

QUEUE_TABLE: dict[str, dict[str, str]] = {
    "hardware": {"defect": "repairs", "billing": "billing", "access": "accounts", "shipping": "logistics",
                 "return": "returns"},
    "software": {"defect": "tech-support", "billing": "billing", "access": "accounts", "shipping": "tech-support",
                 "return": "billing"},
    "subscription": {"defect": "tech-support", "billing": "subscriptions", "access": "accounts",
                     "shipping": "subscriptions", "return": "subscriptions"},
    "accessory": {"defect": "returns", "billing": "billing", "access": "accounts", "shipping": "logistics",
                  "return": "returns"},
}

ISSUE_PHRASES: dict[str, tuple[str, ...]] = {
    # Phrases are written for a product in the sentence ("my {p} ..."), so the kind is only in the verb phrase.
    "defect": ("stopped working", "will not turn on", "keeps crashing", "is broken", "keeps freezing",
               "makes a grinding noise", "shows an error on start", "died after a day"),
    "billing": ("charged me twice", "was billed at the wrong price", "shows a charge I do not recognise",
                "was never refunded", "has a wrong amount on the invoice"),
    "access": ("will not let me log in", "locked me out", "rejects my password", "says my account is disabled",
               "will not accept the reset code"),
    "shipping": ("has not arrived", "is stuck in transit", "went to the wrong address", "arrived without tracking",
                 "has been lost by the courier"),
    "return": ("needs to go back", "is something I want to return", "should be exchanged",
               "is not what I ordered and I want a refund on return", "has to be sent back"),
}

TIER_PHRASES: dict[str, tuple[str, ...]] = {
    "free": ("I am on the Free plan.", "I only use the free tier.", "I have a Basic account.", ""),
    "plus": ("I am a Plus member.", "My account is on Plus.", "We pay for the Plus plan."),
    "pro": ("I am on the Pro plan.", "We have a Pro subscription.", "My account is Pro."),
    "enterprise": ("We are an Enterprise customer.", "Our company has a Business contract.",
                   "This is an Enterprise account."),
}

# Urgency cues with their strength. Level names order from weakest to strongest claim on attention.
CUE_LEVELS = ("low", "none", "medium", "high")
URGENCY_CUES: dict[str, tuple[str, ...]] = {
    "low": ("No rush on this.", "Whenever you get a chance.", "It can wait a few days."),
    "medium": ("This is important to us.", "It is blocking my work.", "Please look at it this week."),
    "high": ("This is urgent!", "Our production is down.", "We are losing money every hour.",
             "Please fix it ASAP, it is an emergency."),
}
NEGATED_CUES: tuple[str, ...] = (
    # A negated strong cue says nothing about urgency: it must not raise the priority.
    "It is not urgent.", "There is no outage on our side.", "This is not an emergency.",
    "Nothing is blocking us.", "We are not losing any money over it.",
)

BASE_PRIORITY = {"high": 0, "medium": 1, "none": 2, "low": 3}  # index into PRIORITIES
TIER_SHIFT = {"free": +1, "plus": 0, "pro": 0, "enterprise": -1}
ISSUE_SHIFT_PAYING = {"defect": -1, "access": -1, "billing": 0, "shipping": 0, "return": +1}


def priority_for(cue_level: str, tier: str, issue: str) -> str:
    """The ground-truth priority: cue base level, moved by tier, then by issue kind for paying tiers."""
    level = BASE_PRIORITY[cue_level] + TIER_SHIFT[tier]
    if tier != "free":
        level += ISSUE_SHIFT_PAYING[issue]
    elif issue == "return":
        level += 1
    return PRIORITIES[min(max(level, 0), len(PRIORITIES) - 1)]


def reply_for(first_name: str, order_number: str, product: str, queue: str) -> str:
    return (f"Hi {first_name}, thanks for reporting order {order_number} for your {product}. "
            f"The {queue} team will contact you shortly.")
