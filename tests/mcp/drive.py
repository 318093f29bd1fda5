"""Drives deployment_mcp's MCP server with the official Python SDK, as an agent would.

    python drive.py http <url> <key> <scenario> [--admin-key K] [--secret S]...
    python drive.py stdio <scenario> -- <command> [args...]

Scenarios: admin (every tool, a deployment followed to its end with progress notifications,
logs, resources, both protocol revisions), writes (every write tool succeeding: a health check,
retry, cancel, approve, reject, rollback; needs the environments of mcp.rs's writes test), user (what a user key may see and may not do),
read-only (no write tool listed or callable), swap (a call after a hot swap of the plugin),
bench (tool round trip vs the same REST call). Each check prints a line; the first failed one
exits 1 with what was seen. Run by tests/tests/suite/mcp.rs.
"""

import asyncio
import json
import statistics
import sys
import time

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

ALL_TOOLS = {
    "list_environments", "get_environment", "check_environment_health", "list_deployments",
    "get_deployment", "get_deployment_logs", "trigger_deployment", "cancel_deployment",
    "retry_deployment", "approve_deployment", "reject_deployment", "rollback_deployment",
    "list_audit_entries", "list_windows", "explain_window", "create_window", "delete_window",
    "list_schedules", "create_schedule", "delete_schedule",
}
WRITE_TOOLS = {
    "trigger_deployment", "cancel_deployment", "retry_deployment", "approve_deployment",
    "reject_deployment", "rollback_deployment", "check_environment_health", "create_window",
    "delete_window", "create_schedule", "delete_schedule",
}
USER_TOOLS = {"list_environments", "get_environment", "list_deployments", "get_deployment"}
DEVELOPER_TOOLS = USER_TOOLS | {"get_deployment_logs", "check_environment_health", "list_windows",
                                "explain_window", "list_schedules"}


class Failed(Exception):
    pass


def check(condition, text, seen=None):
    if not condition:
        raise Failed(f"check failed: {text}" + (f"\n  seen: {seen}" if seen is not None else ""))
    print(f"   ok: {text}", flush=True)


def step(text):
    print(f"-- {text}", flush=True)


SECRETS = []


def no_secret(value, where):
    text = json.dumps(value, default=str)
    for secret in SECRETS:
        check(secret not in text, f"no secret in {where}")


async def tool(session, name, arguments=None, progress=None):
    result = await session.call_tool(name, arguments or {}, progress_callback=progress)
    no_secret(result.model_dump(mode="json"), f"the result of {name}")
    return result


def rfc3339(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def tool_names(listed):
    return {tool.name for tool in listed.tools}


async def admin(session, environment):
    step("tools: every one is listed for an admin key, each with schemas and hints")
    listed = await session.list_tools()
    check(tool_names(listed) == ALL_TOOLS, "the admin sees all seventeen tools", tool_names(listed))
    for listed_tool in listed.tools:
        check(listed_tool.input_schema.get("type") == "object"
              and (listed_tool.output_schema or {}).get("type") == "object"
              and listed_tool.description
              and listed_tool.annotations is not None
              and listed_tool.annotations.read_only_hint == (listed_tool.name not in WRITE_TOOLS),
              f"{listed_tool.name} has input and output schemas, a description and its read-only hint")
    cancel = next(t for t in listed.tools if t.name == "cancel_deployment")
    check(cancel.annotations.destructive_hint is True, "cancel_deployment is marked destructive")

    step("read tools")
    environments = await tool(session, "list_environments")
    check(not environments.is_error and any(
        e["environment_id"] == environment for e in environments.structured_content["environments"]),
        f"list_environments shows {environment}", environments.structured_content)
    one = await tool(session, "get_environment", {"id": environment})
    check(one.structured_content["environment_id"] == environment, "get_environment finds it")
    missing = await tool(session, "get_environment", {"id": "no-such-environment"})
    check(missing.is_error, "an unknown environment is a tool error")
    bad = await tool(session, "get_environment", {"name": "x"})
    check(bad.is_error and "id" in json.dumps(bad.structured_content),
          "a wrong argument is a tool error naming the field", bad.structured_content)

    step("trigger_deployment with wait: progress notifications, then the completed record")
    updates = []

    async def progress(value, total, message):
        updates.append((value, total, message))

    done = await tool(session, "trigger_deployment",
                      {"environments": [environment], "version": "mcp-1", "wait": True}, progress)
    record = done.structured_content
    check(not done.is_error and record["status"] == "completed", "the deployment completed", record)
    check(len(updates) >= 1 and all(total == 100 for _, total, _ in updates),
          f"{len(updates)} progress notification(s) arrived", updates)
    check(any("completed" in (message or "") for _, _, message in updates),
          "the last notification says completed", updates)
    deployment_id = record["deployment_id"]
    fetched = await tool(session, "get_deployment", {"id": deployment_id})
    check(fetched.structured_content["status"] == "completed", "get_deployment reads it")
    history = await tool(session, "list_deployments", {"status": "completed", "limit": 5})
    check(any(e["deployment_id"] == deployment_id for e in history.structured_content["history"]),
          "list_deployments filters the history")

    step("windows: a freeze refuses the trigger, explain names it, an override passes, delete")
    freeze = await tool(session, "create_window", {
        "id": "mcp-freeze", "kind": "deny", "environments": [environment],
        "start": rfc3339(time.time() - 3600), "end": rfc3339(time.time() + 86400),
        "reason": "mcp test"})
    check(not freeze.is_error and freeze.structured_content["created_by"] == "api:ops",
          "create_window makes the window", freeze.structured_content)
    listed_windows = await tool(session, "list_windows")
    check([w["id"] for w in listed_windows.structured_content["windows"]] == ["mcp-freeze"],
          "list_windows shows it", listed_windows.structured_content)
    explained = await tool(session, "explain_window", {"environment": environment})
    check(explained.structured_content["allowed"] is False
          and explained.structured_content["window"] == "mcp-freeze",
          "explain_window names the freeze", explained.structured_content)
    refused = await tool(session, "trigger_deployment", {"environments": [environment]})
    check(refused.is_error and "deployment_window_closed" in json.dumps(refused.structured_content),
          "a trigger into the freeze is refused", refused.structured_content)
    overridden = await tool(session, "trigger_deployment",
                            {"environments": [environment], "override_reason": "mcp hotfix",
                             "wait": True})
    check(not overridden.is_error and overridden.structured_content["status"] == "completed",
          "an override with a reason passes", overridden.structured_content)
    removed = await tool(session, "delete_window", {"id": "mcp-freeze"})
    check(removed.structured_content == {"deleted": "mcp-freeze"}, "delete_window removes it",
          removed.structured_content)

    step("schedules: create one far ahead, list it, refuse a bad one naming its field, delete")
    planned = await tool(session, "create_schedule", {
        "id": "mcp-nightly", "rrule": "FREQ=DAILY;BYHOUR=2", "dtstart": "2030-01-01T02:00:00",
        "time_zone": "Europe/Berlin", "trigger": {"environments": [environment]}})
    check(not planned.is_error and planned.structured_content["created_by"] == "api:ops",
          "create_schedule makes the schedule", planned.structured_content)
    listed_schedules = await tool(session, "list_schedules")
    check([s["id"] for s in listed_schedules.structured_content["schedules"]] == ["mcp-nightly"],
          "list_schedules shows it", listed_schedules.structured_content)
    bad = await tool(session, "create_schedule", {"id": "mcp-bad", "at": "2020-01-01T00:00:00Z"})
    check(bad.is_error and bad.structured_content.get("field") == "at",
          "a schedule in the past is refused, naming at", bad.structured_content)
    removed = await tool(session, "delete_schedule", {"id": "mcp-nightly"})
    check(removed.structured_content == {"deleted": "mcp-nightly"}, "delete_schedule removes it",
          removed.structured_content)

    step("logs are bounded")
    logs = await tool(session, "get_deployment_logs", {"id": deployment_id, "tail": 2})
    check(len(logs.structured_content["lines"]) <= 2 and logs.structured_content["total_lines"] >= 2,
          "tail 2 gives at most 2 lines, and says how many there are", logs.structured_content)
    page = await tool(session, "get_deployment_logs", {"id": deployment_id, "offset": 0, "limit": 1})
    check(len(page.structured_content["lines"]) == 1, "a page of one line")
    too_many = await tool(session, "get_deployment_logs", {"id": deployment_id, "tail": 100000})
    check(too_many.is_error and too_many.structured_content.get("field") == "tail",
          "more than 1000 lines is refused, naming tail", too_many.structured_content)

    step("resources")
    resources = {str(r.uri) for r in (await session.list_resources()).resources}
    for uri in (f"environment://{environment}", f"deployment://{deployment_id}",
                f"deployment://{deployment_id}/log"):
        check(uri in resources, f"{uri} is listed", sorted(resources))
    read = await session.read_resource(f"deployment://{deployment_id}/log")
    body = json.loads(read.contents[0].text)
    no_secret(body, "the log resource")
    check(body["deployment_id"] == deployment_id and body["lines"], "the log resource reads")
    templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
    check("deployment://{id}/log" in templates, "the templates are listed", templates)
    return deployment_id


async def until(session, deployment_id, wanted, bound=60.0):
    """Reads the deployment until its status is one of `wanted` (bounded); returns it."""
    deadline = time.monotonic() + bound
    while True:
        record = (await tool(session, "get_deployment", {"id": deployment_id})).structured_content
        if record["status"] in wanted:
            return record
        if time.monotonic() > deadline:
            raise Failed(f"{deployment_id} never reached {wanted}: {record}")
        await asyncio.sleep(0.1)


async def writes(session):
    step("every write tool, succeeding")
    health = await tool(session, "check_environment_health", {"id": "mcp_healthy"})
    check(not health.is_error and health.structured_content["health"]["healthy"] is True,
          "check_environment_health runs the check and reports it healthy", health.structured_content)

    failed = await tool(session, "trigger_deployment",
                        {"environments": ["mcp_flaky"], "version": "w1", "wait": True})
    check(not failed.is_error and failed.structured_content["status"] == "failed",
          "a first deployment of mcp_flaky fails", failed.structured_content)
    retried = await tool(session, "retry_deployment", {"id": failed.structured_content["deployment_id"]})
    check(not retried.is_error and retried.structured_content["deployment_id"],
          "retry_deployment starts a new deployment", retried.structured_content)
    record = await until(session, retried.structured_content["deployment_id"], {"completed", "failed"})
    check(record["status"] == "completed", "and the retry completes", record)

    slow = await tool(session, "trigger_deployment", {"environments": ["mcp_slow"]})
    slow_id = slow.structured_content["deployment_id"]
    await until(session, slow_id, {"local_triggering", "local_deploying"})
    cancelled = await tool(session, "cancel_deployment", {"id": slow_id})
    check(not cancelled.is_error, "cancel_deployment is accepted", cancelled.structured_content)
    record = await until(session, slow_id, {"cancelled"})
    check(record["status"] == "cancelled", "and the deployment ends cancelled", record)

    canary = {"type": "canary", "canary": 1, "gate": "manual"}
    for decision, ends in (("approve_deployment", "completed"), ("reject_deployment", "cancelled")):
        parked = await tool(session, "trigger_deployment",
                            {"environments": ["mcp_local", "mcp_healthy"], "strategy": canary,
                             "wait": True})
        check(parked.structured_content["status"] == "awaiting_approval",
              "a manual canary waits at its gate", parked.structured_content)
        decided = await tool(session, decision, {"id": parked.structured_content["deployment_id"]})
        check(not decided.is_error, f"{decision} is accepted", decided.structured_content)
        record = await until(session, parked.structured_content["deployment_id"], {ends})
        check(record["status"] == ends, f"and the deployment ends {ends}", record)

    for version in ("r1", "r2"):
        done = await tool(session, "trigger_deployment",
                          {"environments": ["mcp_local"], "version": version, "wait": True})
        check(done.structured_content["status"] == "completed", f"{version} is deployed")
    rolled = await tool(session, "rollback_deployment", {"id": done.structured_content["deployment_id"]})
    check(not rolled.is_error, "rollback_deployment is accepted", rolled.structured_content)
    record = await until(session, done.structured_content["deployment_id"], {"rolled_back", "failed"})
    check(record["status"] == "rolled_back", "and the deployment ends rolled_back", record)
    environment = await tool(session, "get_environment", {"id": "mcp_local"})
    check(environment.structured_content["deployed_version"] == "r1",
          "mcp_local is back on r1", environment.structured_content)

    step("the audit log names each call's tool")
    audit = await tool(session, "list_audit_entries", {"via": "mcp", "action": "deployment.trigger"})
    entries = audit.structured_content["entries"]
    check(not audit.is_error and len(entries) >= 5
          and all(e["tool"] == "trigger_deployment" and e["actor"]["key_name"] == "ops"
                  and e["outcome"]["status"] == "ok" for e in entries),
          "list_audit_entries shows the triggers made through trigger_deployment", entries[:2])
    cancel = await tool(session, "list_audit_entries", {"action": "deployment.cancel", "limit": 1})
    check(cancel.structured_content["entries"][0]["tool"] == "cancel_deployment",
          "and the cancel through cancel_deployment", cancel.structured_content)


async def user(session, environment):
    step("a user key sees the read tools without logs, and cannot trigger")
    names = tool_names(await session.list_tools())
    check(names == USER_TOOLS, "tools/list shows the user's tools only", names)
    refused = await tool(session, "trigger_deployment", {"environments": [environment]})
    check(refused.is_error and "admin" in json.dumps(refused.structured_content),
          "trigger_deployment is a tool error naming the admin role", refused.structured_content)
    environments = await tool(session, "list_environments")
    shown = json.dumps(environments.structured_content)
    check(environments.structured_content["environments"] and '"command"' not in shown
          and '"host"' not in shown, "environments come without connection details", shown[:300])
    status = await tool(session, "list_deployments")
    check(not status.is_error and "active" in status.structured_content,
          "list_deployments shows the running and the latest deployment", status.structured_content)


async def developer(session, environment):
    step("a developer key adds logs and health checks, and cannot trigger")
    names = tool_names(await session.list_tools())
    check(names == DEVELOPER_TOOLS, "tools/list shows the developer's tools", names)
    refused = await tool(session, "cancel_deployment", {"id": "dep-1-00000000"})
    check(refused.is_error and "admin" in json.dumps(refused.structured_content),
          "cancel_deployment is a tool error naming the admin role", refused.structured_content)
    health = await tool(session, "check_environment_health", {"id": environment})
    check(health.is_error and "health_check_url" in json.dumps(health.structured_content),
          "a health check of an environment without a URL says why", health.structured_content)


async def read_only(session, environment):
    step("read_only: no write tool is listed or callable, even for an admin")
    names = tool_names(await session.list_tools())
    check(names == ALL_TOOLS - WRITE_TOOLS, "only read tools are listed", names)
    refused = await tool(session, "trigger_deployment", {"environments": [environment]})
    check(refused.is_error and "read_only" in json.dumps(refused.structured_content),
          "calling one is a tool error", refused.structured_content)


async def connect_http(url, key, modern):
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0))
    return client, streamable_http_client(url, http_client=client)


async def http_main(url, key, scenario, options):
    environment = options.get("environment", "mcp_local")
    for modern in (True, False):
        client, transport = await connect_http(url, key, modern)
        async with client, transport as (read, write), ClientSession(read, write) as session:
            if modern:
                found = await session.discover()
                version = found.supported_versions
                step(f"revision 2026-07-28 (server/discover: {version})")
                check("2026-07-28" in version, "the server speaks 2026-07-28", version)
            else:
                started = await session.initialize()
                step(f"revision {started.protocol_version} (initialize)")
                check(started.protocol_version == "2025-11-25",
                      "an older client gets 2025-11-25", started.protocol_version)
            if scenario == "admin":
                if modern:
                    await admin(session, environment)
                else:
                    names = tool_names(await session.list_tools())
                    check(names == ALL_TOOLS, "the older revision lists the same tools", names)
                    listed = await tool(session, "list_environments")
                    check(not listed.is_error, "and calls them")
            elif scenario == "writes":
                if modern:
                    await writes(session)
            elif scenario == "user":
                await user(session, environment)
            elif scenario == "developer":
                await developer(session, environment)
            elif scenario == "read-only":
                await read_only(session, environment)
            elif scenario == "swap":
                if not modern:
                    continue
                step("a hot swap with a client connected: the next call succeeds")
                first = await tool(session, "list_environments")
                check(not first.is_error, "a call before the swap")
                base = url.split("/api/")[0]
                async with httpx2.AsyncClient() as plain:
                    swapped = await plain.post(f"{base}/api/plugins/deployment_mcp/reload",
                                               headers={"X-API-Key": options["admin-key"]})
                check(swapped.status_code == 200, "the plugin was reloaded", swapped.text)
                after = await tool(session, "list_environments")
                check(not after.is_error, "the next call after the swap succeeds", after)
            elif scenario == "bench":
                if not modern:
                    continue
                await bench(session, url, key)
            else:
                raise Failed(f"unknown scenario {scenario}")


async def bench(session, url, key, rounds=300):
    step("round trip of get_deployment vs the same REST call, one run")
    done = await tool(session, "trigger_deployment", {"version": "bench", "wait": True})
    deployment_id = done.structured_content["deployment_id"]
    base = url.rsplit("/mcp", 1)[0]
    async with httpx2.AsyncClient(headers={"X-API-Key": key}) as rest:
        for _ in range(20):
            await tool(session, "get_deployment", {"id": deployment_id})
            await rest.get(f"{base}/deployments/{deployment_id}")
        mcp_times, rest_times = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            await session.call_tool("get_deployment", {"id": deployment_id})
            mcp_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            answer = await rest.get(f"{base}/deployments/{deployment_id}")
            rest_times.append(time.perf_counter() - start)
            check_quiet(answer.status_code == 200)
    p50 = lambda values: statistics.median(values) * 1000
    p99 = lambda values: sorted(values)[int(len(values) * 0.99) - 1] * 1000
    print(f"get_deployment over {rounds} rounds: MCP p50 {p50(mcp_times):.2f} ms p99 {p99(mcp_times):.2f} ms; "
          f"REST p50 {p50(rest_times):.2f} ms p99 {p99(rest_times):.2f} ms; "
          f"ratio p50 {p50(mcp_times) / p50(rest_times):.2f}", flush=True)


def check_quiet(condition):
    if not condition:
        raise Failed("a REST call failed during the benchmark")


async def stdio_main(scenario, command, options):
    environment = options.get("environment", "mcp_local")
    parameters = StdioServerParameters(command=command[0], args=command[1:])
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        started = await session.initialize()
        step(f"stdio, revision {started.protocol_version}")
        if scenario == "admin":
            names = tool_names(await session.list_tools())
            check(names == ALL_TOOLS, "in-process, every tool is listed", names)
            updates = []

            async def progress(value, total, message):
                updates.append(message)

            done = await tool(session, "trigger_deployment",
                              {"environments": [environment], "version": "stdio-1", "wait": True},
                              progress)
            check(done.structured_content["status"] == "completed", "a deployment over stdio completed",
                  done.structured_content)
            check(updates, "with progress notifications", updates)
            logs = await tool(session, "get_deployment_logs",
                              {"id": done.structured_content["deployment_id"], "tail": 3})
            check(0 < len(logs.structured_content["lines"]) <= 3, "logs over stdio are bounded")
        elif scenario == "user":
            await user(session, environment)
        else:
            raise Failed(f"unknown scenario {scenario}")


def parse(arguments):
    options, rest = {}, []
    items = iter(arguments)
    for item in items:
        if item == "--":
            rest.append("--")
            rest.extend(items)
            break
        if item == "--secret":
            SECRETS.append(next(items))
        elif item.startswith("--") and item != "--":
            options[item[2:]] = next(items)
        else:
            rest.append(item)
    return options, rest


def main():
    options, rest = parse(sys.argv[1:])
    try:
        if rest[0] == "http":
            _, url, key, scenario = rest[:4]
            asyncio.run(http_main(url, key, scenario, options))
        elif rest[0] == "stdio":
            scenario = rest[1]
            command = rest[rest.index("--") + 1:]
            asyncio.run(stdio_main(scenario, command, options))
        else:
            raise Failed(f"unknown mode {rest[0]}")
    except Failed as failure:
        print(f"FAIL: {failure}", flush=True)
        sys.exit(1)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
