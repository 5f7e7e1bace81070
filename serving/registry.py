"""Which artifact every replica of the deployment serves: one small actor that all replicas follow.

``POST /admin/reload`` reaches one replica. To switch all of them, that replica publishes the new artifact
here; every replica long-polls :meth:`ArtifactRegistry.watch`, so it learns of the change at once, loads the
new artifact fully in the background (the old model keeps answering), swaps one reference and reports
back. The replica that took the reload waits in :meth:`ArtifactRegistry.wait_served` until every replica
serves the new generation, so a successful reload means the whole deployment switched.

Serve owns the actor (a deployment-scoped actor, ``DeploymentActorConfig``): it starts before the replicas,
is shared by them and is deleted with the deployment. A redeploy starts a fresh one from the deployment's
``artifact`` argument; so does Serve after the actor itself dies, and the replicas then follow it back
to that artifact (all of them, consistently) until the next reload.
"""

from __future__ import annotations

import asyncio
import contextlib

import ray

REGISTRY_NAME = "artifact-registry"

Target = tuple[int, str]
"""``(generation, artifact directory)``; the generation counts publications from 0 (the deployed artifact)."""


@ray.remote(num_cpus=0)
class ArtifactRegistry:
    """The artifact the deployment should serve, and which generation each replica serves.

    Args:
        artifact: The artifact directory the deployment was started with (generation 0).
    """

    def __init__(self, artifact: str) -> None:
        self._target: Target = (0, artifact)
        self._served: dict[str, int] = {}  # replica id -> generation it serves
        self._changed = asyncio.Condition()

    def current(self) -> Target:
        """What a starting replica should load."""
        return self._target

    async def publish(self, artifact: str) -> Target:
        """Make ``artifact`` the deployment's target (a new generation, even for the same directory)."""
        async with self._changed:
            self._target = (self._target[0] + 1, artifact)
            self._changed.notify_all()
            return self._target

    async def watch(self, replica: str, generation: int, timeout_s: float) -> Target:
        """Record that ``replica`` serves ``generation``; return the target once it is another generation.

        A long poll: it returns as soon as a new generation is published, or the current target after
        ``timeout_s`` (the caller simply asks again).
        """
        async with self._changed:
            self._served[replica] = generation
            self._changed.notify_all()  # wakes wait_served
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._target[0] != generation), timeout_s
                )
            return self._target

    async def wait_served(self, generation: int, replicas: int, timeout_s: float) -> int:
        """Wait (at most ``timeout_s``) until ``replicas`` replicas serve ``generation``; how many do."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._count(generation) >= replicas), timeout_s
                )
            return self._count(generation)

    def _count(self, generation: int) -> int:
        return sum(served == generation for served in self._served.values())
