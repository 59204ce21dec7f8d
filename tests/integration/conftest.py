"""Host integration tier: real kernel, real apps, real agent, real OTLP receiver.
Root gating and the receiver fixture live in tests/conftest.py."""
