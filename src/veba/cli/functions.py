"""`veba new|build|deploy|up|remove|list|invoke|logs`: the function life cycle."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import typer

from veba.cli.catalog import complete_topic, warn_unknown_topics
from veba.cli.client import (
    Client,
    ConnectionClosed,
    DataDirOption,
    GatewayOption,
    Output,
    OutputOption,
    TlsNoVerifyOption,
    TokenOption,
    console,
    err,
    fail,
    gateway_url,
    parse_overrides,
    print_data,
    print_item,
    print_rows,
    stack_file_gateway,
)
from veba.cli.completion import complete_function
from veba.deployments import pack_code
from veba.events import Event
from veba.functions.build import BuildError, ensure_venv
from veba.functions.knative import function_names, load_functions
from veba.functions.stack import KNATIVE_LANG, FunctionSpec, Stack, StackError, check_handler_syntax
from veba.settings import resolve_data_dir
from veba.shapes import DEFAULT_SHAPE, V08, Shape, parse_shape, to_shape
from veba.targets.functions import delivery_request

StackOption = typer.Option(
    Path("stack.yml"), "--file", "-f", help="stack.yml, or a Knative function.yaml"
)
FilterOption = typer.Option(None, "--filter", help="Only this function")


def _stack(path: Path, only: str | None) -> tuple[Stack, list[FunctionSpec]]:
    try:
        stack = load_functions(path)
        specs = [s for n, s in stack.functions.items() if only in (None, n)]
        if only and not specs:
            fail(f"{path}: functions.{only}: no such function in the stack")
        for spec in specs:
            check_handler_syntax(spec)
    except StackError as exc:
        fail(str(exc))
    return stack, specs


def _stack_gateway(file: Path, stack: Stack) -> tuple[str | None, str]:
    """The -f file's provider.gateway, named for messages (None: it names none)."""
    return stack.gateway, f"{file} provider.gateway"


def _payload(spec: FunctionSpec) -> dict[str, object]:
    payload: dict[str, object] = {
        "name": spec.name,
        "lang": spec.lang,
        "environment": spec.environment,
        "secrets": spec.secrets,
        "labels": spec.labels,
        "annotations": spec.annotations,
        "topic": spec.topic,
        "filters": spec.filters,
        "delivery": spec.delivery,
        "workers": spec.workers,
        "timeout": spec.timeout,
        "code": pack_code(spec.handler),
    }
    if spec.shape is not None:
        payload["shape"] = spec.shape
    if spec.lang == KNATIVE_LANG:
        payload.update(
            secret_env=spec.secret_env,
            env_from=spec.env_from,
            concurrency=spec.concurrency,
            max_workers=spec.max_workers,
            target=spec.target,
        )
        if spec.idle is not None:
            payload["idle"] = spec.idle
    return payload


def new(
    name: str | None = typer.Argument(
        None, help="Function name: lower case letters, digits and '-' (a DNS-1123 label)"
    ),
    lang: str = typer.Option("python3-http", "--lang", help="Template (see `veba template list`)"),
    append: Path = typer.Option(Path("stack.yml"), "--append", "-a", help="stack.yml to add it to"),
    topic: str = typer.Option(
        "VmPoweredOnEvent",
        "--topic",
        help="Subjects, comma-separated (see `veba catalog`)",
        autocompletion=complete_topic,
    ),
    test: bool = typer.Option(True, "--test/--no-test", help="Write test_handler.py"),
    list_templates: bool = typer.Option(False, "--list", help="List the templates"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Create a function folder from a template (handler.py, test_handler.py) and add it to stack.yml."""
    from veba.cli.templates import print_templates
    from veba.functions.scaffold import ScaffoldError, new_function

    if list_templates:
        print_templates()
        return
    if name is None:
        fail("missing the function's NAME (or --list for the templates)")
    try:
        folder = new_function(
            name,
            lang,
            directory=append.parent,
            stack=append,
            topic=topic,
            with_test=test,
            # A new stack.yml points at the appliance this CLI would talk to.
            gateway=gateway_url(gateway, resolve_data_dir(data_dir)),
        )
    except ScaffoldError as exc:
        fail(str(exc))
    files = "handler.py, test_handler.py" if test else "handler.py"
    err.print(f"created {folder}/ ({files}) and added {name} to {append}", highlight=False)
    warn_unknown_topics(
        append, {name: topic}, Client(gateway, data_dir, stack_file_gateway(append))
    )


def build(
    file: Path = StackOption,
    filter: str | None = FilterOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Check the stack and build each function's virtualenv (cached by requirements)."""
    _, specs = _stack(file, filter)
    cache = resolve_data_dir(data_dir) / "venvs"
    for spec in specs:
        err.print(f"[bold]{spec.name}[/bold]: building virtualenv", highlight=False)
        try:
            ensure_venv(spec.handler, cache, lambda line: err.print(f"  {line}", highlight=False))
        except BuildError as exc:
            fail(f"{file}: functions.{spec.name}.handler: {exc}")
        err.print(f"[green]{spec.name}[/green]: built", highlight=False)


def deploy(
    file: Path = StackOption,
    filter: str | None = FilterOption,
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Deploy the stack's functions to the appliance (builds there, with progress)."""
    stack, specs = _stack(file, filter)
    client = Client(
        gateway, data_dir, _stack_gateway(file, stack), token=token, tls_no_verify=tls_no_verify
    )
    warn_unknown_topics(file, {s.name: s.topic for s in specs if s.lang != KNATIVE_LANG}, client)
    failed = False
    for spec in specs:
        err.print(
            f"[bold]{spec.name}[/bold]: deploying to {client.gateway.described()}",
            highlight=False,
        )
        for line in client.stream_lines(
            "POST", "/system/functions?stream=true", json=_payload(spec)
        ):
            if not line.strip():
                continue
            item = json.loads(line)
            if "progress" in item:
                err.print(f"  {item['progress']}", highlight=False)
            elif "error" in item:
                err.print(f"[red]error:[/red] {file}: {item['error']}", highlight=False)
                failed = True
            elif "result" in item:
                err.print(f"[green]{spec.name}[/green]: deployed", highlight=False)
    if failed:
        raise typer.Exit(1)


def up(
    file: Path = StackOption,
    filter: str | None = FilterOption,
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Build and deploy in one step (faas-cli up)."""
    deploy(file, filter, gateway, data_dir, token, tls_no_verify)


def remove(
    name: str | None = typer.Argument(
        None,
        help="Function name (else every function in --file)",
        autocompletion=complete_function,
    ),
    file: Path = StackOption,
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Remove deployed functions: NAME, or every function the stack file names."""
    if name:
        names = [name]
    else:
        # Only the names are read: a stack whose code is gone or broken can be removed.
        try:
            names = function_names(file)
        except StackError as exc:
            fail(str(exc))
    # The file's gateway, read as leniently as its names.
    client = Client(
        gateway, data_dir, stack_file_gateway(file), token=token, tls_no_verify=tls_no_verify
    )
    if not name:
        err.print(f"removing from {client.gateway.described()}", highlight=False)
    for n in names:
        response = client.request(
            "DELETE", "/system/functions", json={"functionName": n}, allow=(404,)
        )
        if response.status_code != 404:
            err.print(f"removed {n}", highlight=False)
        elif name:
            not_deployed(client, n)
        else:  # the stack's goal, no such function, holds already
            err.print(f"{n}: not deployed", highlight=False)


def not_deployed(client: Client, name: str) -> NoReturn:
    """Fail saying that `name` is not deployed, and which functions are."""
    names = sorted(str(f.get("name")) for f in client.json("GET", "/system/functions"))
    deployed = f"deployed: {', '.join(names)}" if names else "no function is deployed"
    fail(f"function {name!r} is not deployed at {client.url} ({deployed})")


def list_functions(
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """List deployed functions."""
    rows = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify).json(
        "GET", "/system/functions"
    )
    columns = ["name", "lang", "topic", "status", "paused", "replicas", "availableReplicas"]
    print_rows(rows, [*columns, "scale", "last_error"], output)


def _pause(name: str, paused: bool, client: Client) -> None:
    verb = "pause" if paused else "resume"
    path = f"/api/v1/functions/{quote(name, safe='')}/{verb}"
    if client.request("POST", path, allow=(404,)).status_code == 404:
        not_deployed(client, name)
    if paused:
        console.print(
            f"paused {name}: new events wait in the log; `veba resume {name}` delivers them"
        )
    else:
        console.print(f"resumed {name}")


def pause(
    name: str = typer.Argument(..., help="Function name", autocompletion=complete_function),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Stop delivering events to a function: they wait in the log, none lost (the pause
    outlives a restart of the appliance)."""
    _pause(name, True, Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify))


def resume(
    name: str = typer.Argument(..., help="Function name", autocompletion=complete_function),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Deliver to a paused function again, beginning with what waited."""
    _pause(name, False, Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify))


def invoke(
    name: str = typer.Argument(
        ..., help="Function name (see `veba list`)", autocompletion=complete_function
    ),
    data: str | None = typer.Option(None, "--data", "-d", help="Request body (else stdin)"),
    event: str | None = typer.Option(
        None,
        "--event",
        "-e",
        help="Send a sample event of this type: any of `veba catalog` (VmPoweredOnEvent, ...)",
        autocompletion=complete_topic,
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="With --event: PATH=VALUE (data.Vm.Name=web-01), a path the event type has;"
        " repeatable",
    ),
    add: list[str] = typer.Option(
        [], "--add", help="With --event: PATH=VALUE, a field the event type does not have"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --event: print it, send nothing"),
    content_type: str = typer.Option(
        "application/json", "--content-type", help="Content-Type of the --data or stdin body"
    ),
    asynchronous: bool = typer.Option(False, "--async", help="Queue the call, answer 202"),
    callback: str | None = typer.Option(
        None, "--callback-url", help="With --async: where to POST the function's answer"
    ),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
) -> None:
    """Call a function with a body, as `faas-cli invoke` does, or with a sample event."""
    headers = {"Content-Type": content_type}
    if event is not None:
        if data is not None:
            fail("--event and --data are exclusive")
        shape = _event_shape(Client(gateway, data_dir), name)
        sample = _sample_event(event, set_, add, shape)
        if dry_run:
            sys.stdout.write(json.dumps(sample.to_dict(), indent=2) + "\n")
            return
        # As a delivery to this function posts it: v0.7 structured, v0.8 binary.
        headers, body = delivery_request(sample, attempt=1, deadline=None, binary=shape == V08)
    elif set_ or add or dry_run:
        fail("--set, --add and --dry-run go with --event")
    else:
        body = (
            data.encode()
            if data is not None
            else (b"" if sys.stdin.isatty() else sys.stdin.buffer.read())
        )
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    if asynchronous:
        if callback:
            headers["X-Callback-Url"] = callback
        response = client.request("POST", f"/async-function/{name}", content=body, headers=headers)
        console.print(f"accepted, call id {response.headers.get('x-call-id')}")
        return
    response = client.request("POST", f"/function/{name}", content=body, headers=headers)
    sys.stdout.buffer.write(response.content)
    if not response.content.endswith(b"\n"):
        sys.stdout.write("\n")


def _event_shape(client: Client, name: str) -> Shape:
    """The VEBA event shape the deployed function gets (v0.7 if it cannot be told)."""
    try:
        response = client.http.get(f"/system/function/{name}")
        if response.status_code == 200:
            return parse_shape(str(response.json().get("eventShape") or DEFAULT_SHAPE))
    except (httpx.HTTPError, ValueError):
        pass
    return DEFAULT_SHAPE


def _sample_event(event_class: str, settings: list[str], adds: list[str], shape: Shape) -> Event:
    """A sample event of any catalogue type (`veba catalog`), in the shape the
    function gets: the simulator's where it makes that type, else one built
    from the type's pyVmomi class."""
    from veba import catalog as cat
    from veba.providers.simulator import SimulationError

    overrides = parse_overrides(settings)
    added = parse_overrides(adds, "--add")
    try:
        entry = cat.Catalog(cat.build(), offline=True).get(event_class)
    except cat.UnknownEventType as exc:
        if "." not in event_class:
            fail(f"--event {event_class}: {exc} (see `veba catalog`)")
        # A dotted EventEx id that only a vCenter's EventManager knows.
        entry = cat.extensible(event_class, "eventex")
    try:
        sample, _ = cat.sample(entry, added=added, **overrides)
    except cat.UnknownPath as exc:
        fail(f"--set {exc}")
    except SimulationError as exc:
        fail(f"--event {entry.type}: {exc}")
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        fail(f"--set/--add: cannot apply {', '.join([*settings, *adds])} to a {entry.type}: {exc}")
    return to_shape(sample, shape)


def logs(
    name: str | None = typer.Argument(
        None, help="Function name (see `veba list`)", autocompletion=complete_function
    ),
    event: str | None = typer.Option(
        None,
        "--event",
        help="Instead: one event's story (its id, or the seq `veba events list` shows),"
        " across every function it went to",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines"),
    tail: int = typer.Option(100, "--tail", help="Start with at most this many past lines"),
    gateway: str | None = GatewayOption,
    data_dir: Path | None = DataDirOption,
    token: str | None = TokenOption,
    tls_no_verify: bool = TlsNoVerifyOption,
    output: Output = OutputOption,
) -> None:
    """Show a function's log lines (stdout, stderr and system), or with --event ID
    one event's story: received, logged, each delivery and attempt, and what each
    function printed while handling it, in time order."""
    if event is not None:
        if name is not None or follow:
            fail("--event shows one event across functions: give no NAME and no --follow")
        client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
        story = client.json("GET", f"/api/v1/events/{quote(event, safe='')}/story")
        if output != Output.table:
            print_data(story, output)
        else:
            _print_story(story)
        return
    if name is None:
        fail("which function? `veba logs NAME` (see `veba list`), or `veba logs --event ID`")
    client = Client(gateway, data_dir, token=token, tls_no_verify=tls_no_verify)
    if (
        client.request("GET", f"/system/function/{quote(name, safe='')}", allow=(404,)).status_code
        == 404
    ):
        not_deployed(client, name)
    params = f"name={name}&tail={tail}&follow={'true' if follow else 'false'}"
    try:
        for line in client.stream_lines("GET", f"/system/logs?{params}", follow=follow):
            if not line.strip():
                continue
            item = json.loads(line)
            if output != Output.table:
                print_item(item, output)
            else:
                sys.stdout.write(f"{item['timestamp']} {item['instance']:6} {item['text']}\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except ConnectionClosed:
        pass
    else:
        if not follow:
            return
    # Following ends only when the appliance ends it (it stops), as `kubectl logs
    # -f` ends with its pod: said in one line, and not an error.
    err.print(f"the appliance at {client.url} closed the connection", highlight=False)


def _print_story(story: dict[str, Any]) -> None:
    """A story as lines: local time, who (veba or the function), what."""
    head = f"event {story['event_id']} (seq {story['seq']}), trace {story['trace_id']}"
    sys.stdout.write(head + "\n")
    for chapter in story["chapters"]:
        at = chapter["at"]
        stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
        who = chapter.get("function") or "veba"
        text = chapter["text"]
        if chapter["kind"] == "output":
            text = f"{chapter.get('stream') or 'stdout'} | {text}"
        sys.stdout.write(f"{stamp} {who:<16} {text}\n")


def register(app: typer.Typer) -> None:
    app.command()(new)
    app.command()(build)
    app.command()(deploy)
    app.command()(up)
    app.command()(remove)
    app.command("list")(list_functions)
    app.command()(invoke)
    app.command()(pause)
    app.command()(resume)
    app.command()(logs)
