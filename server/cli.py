"""Command line entry point (placeholder until the server lands)."""
def main() -> None:
    print("mcp-backend")
