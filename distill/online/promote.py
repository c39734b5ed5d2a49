"""The candidate into service through the gateway's student-versions path (its admin API), as `kdgate student`
does: the gateway checks the files and the tokenizer, loads the weights (or the LoRA adapter on every replica),
and every gateway process follows the store's slot."""

from __future__ import annotations

import httpx

from distill.online.settings import GatewayLink


class PromotionFailed(Exception):
    pass


class Gateway:
    def __init__(self, link: GatewayLink):
        self.url = link.url.rstrip("/") + "/admin/v1/students"
        self.headers = {"Authorization": f"Bearer {link.admin_key.get_secret_value()}"} if link.admin_key else {}
        if link.model:  # a gateway of several pairs: its admin API is the one of the pair this header names
            self.headers["x-kdgate-model"] = link.model
        self.timeout = link.timeout_s

    def status(self) -> dict:
        return self._call("GET", "/status")

    def register(self, body: dict) -> dict:
        return self._call("POST", "", body)

    def promote(self, name: str, canary_fraction: float | None = None) -> dict:
        return self._call("POST", f"/{name}/promote",
                          {"canary_fraction": canary_fraction} if canary_fraction is not None else None)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as error:
            raise PromotionFailed(f"the gateway at {self.url} is unreachable ({type(error).__name__}: {error})") \
                from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise PromotionFailed(f"the gateway refused {method} {path or '/'} ({response.status_code}): {message}")
        return response.json()
