"""vLLM's runtime LoRA endpoints, on every student replica: all of them get the adapter, or none keeps it.

`POST /v1/load_lora_adapter {lora_name, lora_path}` on each replica (vLLM started with `--enable-lora` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`), then each replica's `/v1/models` must list it; if any replica refuses or
does not list it, the adapter is unloaded from the replicas that took it and `AdapterRefused` names the replica
and its reason. `kdgate engine --enable-lora` speaks the same endpoints (gateway.engine_lora).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit, urlunsplit

import httpx

from runtime.errors import from_httpx

log = logging.getLogger(__name__)


class AdapterRefused(Exception):
    """A replica did not take the adapter; nothing was left loaded anywhere."""

    def __init__(self, replica: str, reason: str):
        super().__init__(f"student server {replica} did not load the adapter: {reason}; the old version keeps "
                         "serving everywhere")
        self.replica = replica
        self.reason = reason


class LoraReplicas:
    def __init__(self, client: httpx.AsyncClient, urls: list[str], api_key: str | None = None,
                 from_dns: bool = False):
        self.client = client
        self.configured = [url.rstrip("/") for url in urls]
        self.urls = list(self.configured)
        self.from_dns = from_dns
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def discover(self) -> list[str]:
        """The replicas now: the configured URLs, and with `from_dns` every address their hosts resolve to (a
        headless Service lists its ready pods), so that replicas that joined are found."""
        if self.from_dns:
            found = await asyncio.gather(*(replica_addresses(url) for url in self.configured))
            self.urls = sorted({url for urls in found for url in urls})
        return self.urls

    async def reconcile(self, adapters: dict[str, str]) -> list[tuple[str, str]]:
        """Every replica gets each of `adapters` (name → path) that it does not list: a replica that restarted,
        or joined, has none of them. Returns what was loaded where; a replica that refuses is logged and tried
        again at the next reconciliation (its requests meanwhile fall back to the teacher)."""
        loaded = []
        for url in await self.discover():
            listed = await self._listed(url)
            if listed is None:  # not up yet (the headless Service lists starting pods too): the next round
                log.debug("student server %s does not answer yet; its adapters wait for the next round", url)
                continue
            for name, path in adapters.items():
                if name in listed:
                    continue
                problem = await self._load_one(url, name, path)
                if problem is None:
                    loaded.append((url, name))
                    log.warning("adapter %s was missing on student server %s (restarted or new); loaded it", name,
                                url)
                else:
                    log.warning("adapter %s is missing on student server %s and could not be loaded: %s", name,
                                url, problem)
        return loaded

    async def load(self, name: str, path: str) -> None:
        """Onto every replica that does not list it yet. A listed adapter is never loaded again: vLLM refuses a
        second load of a name (400 "has already been loaded"), which made promoting a canary to full, and rolling
        back to a version whose adapter was kept, fail with 502; and a same-name reload is what vLLM issue #42125
        warns of. A name is one version's immutable adapter, so a listed one is the right one."""
        loaded: list[str] = []
        for url in await self.discover():
            if await self._lists(url, name):
                continue
            problem = await self._load_one(url, name, path)
            if problem is not None:
                for done in loaded:
                    await self.unload_one(done, name)
                raise AdapterRefused(url, problem)
            loaded.append(url)
        log.info("adapter %s loaded on %d student server(s)", name, len(loaded))

    async def unload(self, name: str) -> None:
        """Best effort on every replica (an adapter that is not there is fine)."""
        for url in self.urls:
            await self.unload_one(url, name)

    async def _lists(self, url: str, name: str) -> bool:
        """The replica answers /v1/models with `name` among its models (an error: not known to, so a load is tried
        and its failure says what is wrong)."""
        return name in (await self._listed(url) or set())

    async def _listed(self, url: str) -> set[str] | None:
        """The ids the replica's /v1/models lists (none on an error answer), or None when it cannot be reached."""
        try:
            listed = await self.client.get(f"{url}/models", headers=self.headers)
        except httpx.TransportError:
            return None
        try:
            return {model.get("id") for model in listed.json().get("data", [])} if listed.status_code == 200 else set()
        except (ValueError, AttributeError):
            return set()

    async def _load_one(self, url: str, name: str, path: str) -> str | None:
        try:
            response = await self.client.post(f"{url}/load_lora_adapter", headers=self.headers,
                                              json={"lora_name": name, "lora_path": path})
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {_message(response)}"
            if not await self._lists(url, name):
                await self.unload_one(url, name)
                return f"it answered the load but does not list `{name}` in /v1/models"
        except httpx.HTTPError as error:
            return from_httpx(error, backend="student", url=url).message
        return None

    async def unload_one(self, url: str, name: str) -> None:
        try:
            response = await self.client.post(f"{url}/unload_lora_adapter", headers=self.headers,
                                              json={"lora_name": name})
            if response.status_code not in (200, 404):
                log.warning("unloading adapter %s from %s: HTTP %d %s", name, url, response.status_code,
                            _message(response))
        except httpx.HTTPError as error:
            log.warning("unloading adapter %s from %s failed: %s", name, url, error)


async def replica_addresses(url: str) -> list[str]:
    """`url` once per address its host resolves to (the URL itself when the host is an address, or does not
    resolve now: the load then fails and says so)."""
    parts = urlsplit(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 80,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        return [url]
    addresses = sorted({info[4][0] for info in infos})
    port = f":{parts.port}" if parts.port else ""
    return [urlunsplit(parts._replace(netloc=f"[{address}]{port}" if ":" in address else f"{address}{port}"))
            for address in addresses]


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body))[:300]
    return str(body)[:300]
