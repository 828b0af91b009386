"""Which commands would reach the network: a host other than 127.0.0.1/localhost, or a package index.

A pure check on the parsed command, used by :class:`corolla.assistant.agent.policy.CommandPolicy`
to refuse before anything runs, with a reason the model can act on. It is a first line only: where
the kernel allows it, commands also run in a network namespace of their own (see ``shell.py``), so
a host hidden in a script is unreachable too.
"""

from __future__ import annotations

import re

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^\s/@'\"]*@)?(\[[0-9a-fA-F:.]+\]|[^\s/:?#'\"\\)]+)")

# options that take a value (so the value is not mistaken for a host), per tool
_VALUE_OPTS = {
    "curl": {"-o", "--output", "-H", "--header", "-d", "--data", "--data-raw", "--data-binary", "--data-urlencode",
             "-X", "--request", "-u", "--user", "-A", "--user-agent", "-e", "--referer", "-T", "--upload-file",
             "-F", "--form", "-w", "--write-out", "-m", "--max-time", "--connect-timeout", "-b", "--cookie",
             "-c", "--cookie-jar", "-r", "--range", "--retry", "-E", "--cert", "--cacert", "--key", "-K",
             "--config", "-D", "--dump-header", "--json"},
    "wget": {"-O", "--output-document", "-o", "--output-file", "-a", "--append-output", "-P", "--directory-prefix",
             "-U", "--user-agent", "--header", "-t", "--tries", "-T", "--timeout", "--post-data", "--post-file",
             "--user", "--password"},
    "ssh": {"-p", "-i", "-l", "-o", "-F", "-L", "-R", "-D", "-b", "-c", "-E", "-e", "-m", "-O", "-Q", "-S", "-W",
            "-w", "-B", "-I"},
    "nc": {"-p", "-s", "-w", "-i", "-q", "-X"},
    "ping": {"-c", "-i", "-w", "-W", "-s", "-t", "-I"},
}
_VALUE_OPTS["sftp"] = _VALUE_OPTS["mosh"] = _VALUE_OPTS["ssh"]
_VALUE_OPTS["ncat"] = _VALUE_OPTS["netcat"] = _VALUE_OPTS["telnet"] = _VALUE_OPTS["nc"]
_PROXY_OPTS = {"-x", "--proxy", "--preproxy", "-J"}  # their value is a host too
_REROUTE_OPTS = {"--resolve", "--connect-to"}
_HOST_TOOLS = {"ssh", "sftp", "mosh", "telnet", "nc", "ncat", "netcat", "ping", "ping6", "dig", "nslookup", "host",
               "ftp", "whois", "traceroute"}
_URL_TOOLS = {"curl", "wget", "http", "https", "xh"}
_GIT_GLOBAL_VALUE_OPTS = {"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--exec-path"}
_GIT_REMOTE = {"clone", "fetch", "pull", "push", "ls-remote", "archive"}

# package managers: (tool, subcommands that download) and the flag that keeps them offline
_INSTALLERS: dict[str, tuple[set[str], set[str]]] = {
    "pip": ({"install", "download", "wheel"}, {"--no-index"}),
    "uv": ({"add", "sync", "lock", "tool"}, {"--offline"}),
    "poetry": ({"add", "install", "update", "lock"}, set()),
    "npm": ({"install", "i", "ci", "add", "update", "upgrade", "exec", "x", "publish"}, {"--offline"}),
    "pnpm": ({"install", "i", "add", "update", "up", "dlx"}, {"--offline"}),
    "yarn": ({"install", "add", "upgrade", "dlx", "up"}, {"--offline"}),
    "go": ({"get", "install", "mod"}, set()),
    "cargo": ({"install", "fetch", "update", "add", "publish", "search"}, {"--offline"}),
    "gem": ({"install", "update", "fetch"}, {"--local"}),
    "apt": ({"install", "update", "upgrade", "download", "source"}, set()),
    "brew": ({"install", "update", "upgrade", "fetch", "tap"}, set()),
    "conda": ({"install", "create", "update", "upgrade"}, {"--offline"}),
    "pipx": ({"install", "run", "upgrade"}, set()),
}
_INSTALLERS["pip3"] = _INSTALLERS["pip"]
_INSTALLERS["apt-get"] = _INSTALLERS["apt"]
_INSTALLERS["mamba"] = _INSTALLERS["conda"]


def is_local_host(host: str) -> bool:
    host = host.strip().lower().strip("[]")
    return host in LOCAL_HOSTS or host == "::1" or host.endswith(".localhost")


def _host_of(spec: str) -> str:
    """The host in ``[user@]host[:port][/path]`` or a URL."""
    m = URL_RE.search(spec)
    if m:
        return m.group(2)
    spec = spec.rsplit("@", 1)[-1]
    if spec.startswith("["):
        return spec[:spec.find("]") + 1] if "]" in spec else spec
    return re.split(r"[:/]", spec, maxsplit=1)[0]


def _refuse(what: str, host: str) -> str:
    return (f"{what} would reach the network host {host!r}; only 127.0.0.1 and localhost may be reached "
            "from agent commands (work offline, or ask the user to run it)")


def _operands(args: list[str], value_opts: set[str]) -> tuple[list[str], list[str]]:
    """The non-option arguments (skipping option values), and the values of proxy/jump options (hosts too)."""
    out: list[str] = []
    proxies: list[str] = []
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a.startswith("-") and a != "-":
            name = a.split("=", 1)[0]
            if name in _PROXY_OPTS:
                if "=" in a:
                    proxies.append(a.split("=", 1)[1])
                elif i + 1 < len(args):
                    proxies.append(args[i + 1])
            skip = (a in value_opts or a in _PROXY_OPTS) and "=" not in a
            continue
        out.append(a)
    return out, proxies


def _tool(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def network_refusal(parts: list[list[str]], raw: str) -> str | None:
    """Why the command (its simple commands ``parts``, as tokens, and its ``raw`` text) is refused, or None."""
    for m in URL_RE.finditer(raw):
        scheme, host = m.group(1).lower(), m.group(2)
        if scheme != "file" and not is_local_host(host):
            return _refuse(f"{m.group(0)!r}", host)
    for tokens in parts:
        reason = _part_refusal(tokens)
        if reason:
            return reason
    return None


def _part_refusal(tokens: list[str]) -> str | None:
    if not tokens:
        return None
    tool, args = _tool(tokens[0]), tokens[1:]
    if re.fullmatch(r"python[0-9.]*", tool) and args[:2] in (["-m", "pip"], ["-m", "pip3"]):
        tool, args = "pip", args[2:]
    if tool == "uv" and args[:1] == ["pip"]:
        tool, args = "pip", args[1:]
    if tool in _URL_TOOLS or tool in _HOST_TOOLS:
        if any(a.split("=", 1)[0] in _REROUTE_OPTS for a in args):
            return f"{tool} with --resolve/--connect-to may reroute to another host; it is refused"
        operands, proxies = _operands(args, _VALUE_OPTS.get(tool, set()))
        if tool in ("http", "https", "xh"):  # httpie: [METHOD] URL [items]; only the URL names a host
            operands = [o for o in operands if not o.isupper()][:1]
        if tool in ("ssh", "sftp", "mosh", "telnet", "nc", "ncat", "netcat", "ping", "ping6", "traceroute"):
            operands = operands[:1]  # what follows the host is its command (ssh) or a port
        for spec in operands + proxies:
            host = _host_of(spec)
            if host and not is_local_host(host):
                return _refuse(tool, host)
        return None
    if tool in ("scp", "rsync"):
        for a in args:
            if a.startswith("-"):
                continue
            if "://" in a or re.match(r"^[^/]*?[^/\\]:", a):
                host = _host_of(a.split("::")[0])
                if not is_local_host(host):
                    return _refuse(tool, host)
        return None
    if tool == "git":
        return _git_refusal(args)
    if tool in _INSTALLERS:
        subs, offline = _INSTALLERS[tool]
        operands = [a for a in args if not a.startswith("-")]
        if tool == "yarn" and not operands:
            operands = ["install"]
        if operands and operands[0] in subs and not (offline & set(args)):
            hint = f" (add {' or '.join(sorted(offline))} to use what is already here)" if offline else ""
            return f"`{tool} {operands[0]}` downloads packages from the network; it is refused{hint}"
    return None


def _git_refusal(args: list[str]) -> str | None:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _GIT_GLOBAL_VALUE_OPTS else 1
    if i >= len(args):
        return None
    sub, rest = args[i], args[i + 1:]
    if sub == "submodule" and any(a in ("update", "sync", "add") for a in rest):
        return "`git submodule update/add` fetches from remotes; it is refused (only 127.0.0.1/localhost)"
    if sub not in _GIT_REMOTE:
        return None
    operands = [a for a in rest if not a.startswith("-")]
    if sub == "archive" and not any(a.startswith("--remote") for a in rest):
        return None
    for spec in operands[:1]:
        if spec.startswith(("/", "./", "../", "~")) or spec == ".":
            return None
        if "://" in spec or re.match(r"^[^/]*?[^/\\]:", spec):
            host = _host_of(spec)
            return None if is_local_host(host) else _refuse(f"git {sub}", host)
        if sub == "clone":
            return None  # a local path
    return (f"`git {sub}` talks to a remote (by name or the default one), which may be on the network; only "
            "remotes at an explicit 127.0.0.1/localhost URL or a local path are allowed")
