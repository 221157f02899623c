"""Development conveniences, apart from the service: local backing services and the demo.

:mod:`gateway.dev.services` finds or starts PostgreSQL and an MQTT broker for ``make run`` and the
test suite; :mod:`gateway.dev.demo` is ``gateway demo`` (what ``make run`` starts). Production
code never imports this package.
"""
