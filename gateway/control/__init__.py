"""Credit control: accounts' arrears, the by-law's policy and rules, notices, and confirmed
remote disconnection, restriction and reconnection of meters (see docs/credit-control.md)."""
