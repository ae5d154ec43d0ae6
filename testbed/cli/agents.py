"""``testbed agent`` (the reference HEMS as its own process) and ``testbed agents keys|acl``.

The work is in :mod:`testbed.agents`; the protocol in docs/agents.md.
"""


from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from testbed.cli.output import fail as _fail
from testbed.errors import InputError

if TYPE_CHECKING:
    from fractions import Fraction


def _households(rig: str) -> list[str]:
    from testbed.config.rig import load_rig

    return [h.id for h in load_rig(rig).households]


def register(app: typer.Typer) -> None:
    """Add ``agent`` and the ``agents`` sub-app to ``app``."""
    agents_app = typer.Typer(help="Household agents: keys and broker ACL (docs/agents.md).",
                             no_args_is_help=True, rich_markup_mode=None)

    @app.command("agent")
    def agent(
        household: Annotated[str, typer.Option(help="the household this agent bids for")],
        broker: Annotated[str, typer.Option(help="mqtt://[user:pass@]host[:port]")],
        key: Annotated[Path, typer.Option(help="the agent's Ed25519 key (PEM, mode 0600)")],
        price: Annotated[str | None, typer.Option(
            help="limit price AUD/kWh (default: the gate's suggested price, else the "
                 "midpoint of the tariffs)")] = None,
        energy: Annotated[str | None, typer.Option(
            help="order energy kWh (default: the forecast net)")] = None,
        runs: Annotated[int, typer.Option(help="exit after this many runs' last result")] = 1,
        eth_key: Annotated[Path | None, typer.Option(
            help="the household's Ethereum key (0x-hex file, mode 0600): on an EVM ledger "
                 "each order is also its own signed transaction")] = None,
    ) -> None:
        """Run the reference HEMS for one household: forecast, bid, log (JSON lines)."""
        from contracts.numbers import exact
        from testbed.agents import load_eth_key, load_key, reference_agent
        from testbed.telemetry import parse_broker_url

        try:
            parse_broker_url(broker)
            signer = load_key(key)
            eth = None if eth_key is None else load_eth_key(eth_key)
            limit: Fraction | None = None if price is None else exact(price)
            amount: Fraction | None = None if energy is None else exact(energy)
        except InputError as e:
            _fail(str(e))
            return
        except ValueError as e:
            _fail(f"--price/--energy: {e}")
            return
        try:
            import asyncio

            asyncio.run(reference_agent(household, broker, signer, price=limit,
                                        energy=amount, runs=runs, eth_key=eth))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:  # the broker went away: one line, not a traceback
            _fail(f"agent {household}: {type(e).__name__}: {e}")

    @agents_app.command("keys")
    def keys(
        rig: Annotated[str, typer.Argument(help="built-in rig name or a rig TOML file")],
        out: Annotated[Path, typer.Argument(help="folder for the agents' key files")],
        lab_held: Annotated[bool, typer.Option(
            help="the operator also keeps each private key (needed for agent_absent = "
                 "'scenario')")] = False,
        eth: Annotated[bool, typer.Option(
            help="also an Ethereum key per household (OUT/ID.eth.key) whose address the "
                 "operator certifies on --ledger evm...")] = False,
    ) -> None:
        """A key per household for its agent (OUT/ID.key), registered with the operator."""
        from testbed.agents import enrol, enrol_eth

        try:
            households = _households(rig)
            paths = enrol(households, out, lab_held)
            if eth:
                paths += enrol_eth(households, out)
        except InputError as e:
            _fail(str(e))
            return
        for p in paths:
            typer.echo(str(p))

    @agents_app.command("address")
    def address(
        household: Annotated[str, typer.Argument(help="the household's id")],
        eth_address: Annotated[str, typer.Argument(help="0x and 40 hex digits")],
    ) -> None:
        """Register the Ethereum address of a household whose HEMS holds its own key."""
        from testbed.agents import register_address

        try:
            typer.echo(str(register_address(household, eth_address)))
        except InputError as e:
            _fail(str(e))

    @agents_app.command("acl")
    def acl(
        rig: Annotated[str, typer.Argument(help="built-in rig name or a rig TOML file")],
        market_user: Annotated[str, typer.Option(help="the testbed's broker user")] = "testbed",
    ) -> None:
        """Print a mosquitto acl_file: each agent publishes only its own order topic."""
        from testbed.agents import acl as make_acl

        try:
            typer.echo(make_acl(_households(rig), market_user))
        except InputError as e:
            _fail(str(e))

    app.add_typer(agents_app, name="agents")
