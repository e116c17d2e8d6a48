"""The asyncio layer: transport, discovery, daemon and client (the only code that awaits)."""
