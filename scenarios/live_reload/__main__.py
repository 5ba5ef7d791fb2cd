"""live_reload: a gateway on `file:DIR` follows edits to its mounted config without a restart,
and skips a broken edit while the previous version keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

from scenarios._kit import Story, run

CONFIG = Path(__file__).parent / "config"
SECRET_V1 = "push-secret-2025"
SECRET_V2 = "push-secret-2026"
ENV = {"GITHUB_SECRET_V1": SECRET_V1, "GITHUB_SECRET_V2": SECRET_V2}


class ConfigMapVolume:
    """A directory laid out the way the kubelet mounts a ConfigMap: each generation in its own
    `..<n>_<version>` directory, `..data` pointing at the current one, and top-level symlinks
    through `..data`. Publishing is one atomic symlink swap, so a reader never sees half of it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._generations: list[Path] = []
        self._count = 0

    def publish(self, version: str) -> str:
        """Make config/<version> the current content; returns the new generation's name."""
        source = CONFIG / version
        self._count += 1
        generation = self.root / f"..{self._count}_{version}"
        shutil.copytree(source, generation)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(generation.name)
        tmp_link.replace(self.root / "..data")
        for f in source.iterdir():
            link = self.root / f.name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / f.name)
        # Like the kubelet, drop old generations, but one late: a read that resolved `..data`
        # just before the swap may still be going through the previous one.
        self._generations.append(generation)
        while len(self._generations) > 2:
            shutil.rmtree(self._generations.pop(0), ignore_errors=True)
        return generation.name


def tell(story: Story) -> None:
    story.step("Mount version 1 of the config (ConfigMap layout) and start a gateway on it")
    volume = ConfigMapVolume(story.tempdir("configmap"))
    generation = volume.publish("v1")
    story.say(f"config: file:{volume.root}  (..data -> {generation})")
    gw = story.gateway(f"file:{volume.root}", ENV, gateway_id="gw-live")
    pid = gw.proc.pid if gw.proc else None
    first = story.status(gw)
    story.say(f"gateway {gw.gateway_id} ready at {gw.url}, pid {pid}")
    story.check(first["namespaces"] == {"acme": 1}, "it serves 1 webhook in namespace acme",
                first["namespaces"])

    push = f"{gw.url}/webhook/acme/github-push"
    release = f"{gw.url}/webhook/acme/github-release"

    story.step("Send a webhook signed with the version 1 secret")
    r = story.post(push, SECRET_V1)
    rev1 = int(r.headers.get("x-whplane-revision", "0"))
    story.say(f"POST /webhook/acme/github-push -> {r.status_code}, X-Whplane-Revision: {rev1}")
    story.require(r.status_code == 200, "accepted (200)", r.text)
    r = story.post(release, SECRET_V2)
    story.check(r.status_code == 404, "github-release does not exist yet (404)", r.status_code)

    story.step("Publish version 2 on disk: secret rotated, webhook github-release added")
    generation = volume.publish("v2")
    story.say(f"..data -> {generation} (one atomic symlink swap); no restart, no signal")
    after = story.wait_status(gw, lambda st: st["revision"] > rev1, timeout=15)
    story.require(after is not None, "the gateway picked up the change by itself")
    assert after is not None
    story.say(f"/status: revision {after['revision']}, namespaces {after['namespaces']}")
    r_new = story.post(release, SECRET_V2)
    story.check(r_new.status_code == 200, "the new webhook github-release is served (200)",
                r_new.status_code)
    r_old = story.post(push, SECRET_V1)
    story.check(r_old.status_code == 401, "the old secret is now refused (401)",
                r_old.status_code)
    r = story.post(push, SECRET_V2)
    rev2 = int(r.headers.get("x-whplane-revision", "0"))
    story.check(r.status_code == 200, "the new secret is accepted (200)", r.status_code)
    story.check(rev2 > rev1, f"X-Whplane-Revision moved from {rev1} to {rev2}")
    story.check(gw.proc is not None and gw.proc.pid == pid and gw.proc.poll() is None
                and after["started_at"] == first["started_at"],
                f"same process (pid {pid}), never restarted")

    story.step("Publish a broken edit: github-push with a mistyped field (`secrte:`)")
    volume.publish("v3-broken")
    broken = story.wait_status(gw, lambda st: st["errors"], timeout=15)
    story.require(broken is not None, "the gateway noticed the edit")
    assert broken is not None
    for key, error in broken["errors"].items():
        story.say(f"/status error: {key}: {error}")
    story.check(any("github-push" in k and "previous version kept" in e
                    for k, e in broken["errors"].items()),
                "/status names github-push and says its previous version is kept")
    r = story.post(push, SECRET_V2)
    story.check(r.status_code == 200, "version 2 of github-push keeps serving (200)",
                r.status_code)
    r = story.post(push, SECRET_V1)
    story.check(r.status_code == 401, "the broken edit did not bring the old secret back (401)",
                r.status_code)
    ready = story.http.get(f"{gw.url}/readyz")
    story.check(ready.status_code == 200, "the gateway stays ready", ready.status_code)

    story.step("Revert the broken edit (publish version 2 again)")
    volume.publish("v2")
    fixed = story.wait_status(
        gw, lambda st: st["revision"] > broken["revision"] and not st["errors"], timeout=15)
    story.check(fixed is not None, "the error is gone from /status")
    r = story.post(push, SECRET_V2)
    story.check(r.status_code == 200, "github-push still accepts the version 2 secret (200)",
                r.status_code)


if __name__ == "__main__":
    run("live_reload: config edits on disk, picked up without restart", tell)
