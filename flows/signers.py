"""Which maintainer key signs what by default, and loading keys by name with a useful error.

| role      | default key          | signs                                  | usually held by         |
|-----------|----------------------|----------------------------------------|-------------------------|
| `root`    | `maintainer-root`    | new root documents (rotation, revoke)  | offline, k-of-n         |
| `release` | `maintainer-release` | manifests of new versions              | the training host       |
| `staging` | `maintainer-staging` | `staging`, `staging-*` channel records | the training host       |
| `promote` | `maintainer-promote` | every other channel (`production`)     | maintainers, k-of-n     |

The `snapshot` role lists the staging and promote keys at threshold 1, so whoever publishes a
channel record can also sign the snapshot naming it. Every command that signs takes `--key NAME`
(repeatable) to override these names; a named key that is not in `$SHOAL_HOME/keys` is an error
that says how to create it, never a key created on the spot (the registry's root would not list
it). Only first-run setup (`flows.genesis`), which creates the registry, creates its keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.config import ShoalConfig

if TYPE_CHECKING:
    from registry.policy import RootPolicy
    from registry.signing import SigningKey

DEFAULT_KEYS = {"root": "maintainer-root", "release": "maintainer-release",
                "staging": "maintainer-staging", "promote": "maintainer-promote"}


def load(cfg: ShoalConfig, names: list[str]) -> list[SigningKey]:
    """The named private keys from `cfg.keys_dir`; a missing one raises `NotFoundError` saying how
    to create it and add it to the registry."""
    from registry.exceptions import NotFoundError
    from registry.signing import load_key

    out = []
    for name in names:
        try:
            out.append(load_key(cfg.keys_dir, name, cfg.key_passphrase))
        except NotFoundError:
            raise NotFoundError(
                f"no signing key {name!r} in {cfg.keys_dir}: create it with `shoal keys create "
                f"{name}` and add it to the registry's policy (`shoal registry rotate-root "
                f"--<role>-key {name}`), or name another key with --key") from None
    return out


def public(cfg: ShoalConfig, names: list[str]):  # -> list[registry.signing.KeyInfo]
    """The public halves of the named keys (`NAME.pub` in `cfg.keys_dir`: a maintainer's own key,
    or one another maintainer sent), for building a policy."""
    from registry.exceptions import NotFoundError
    from registry.signing import list_keys

    known = {k.name: k for k in list_keys(cfg.keys_dir)}
    missing = [n for n in names if n not in known]
    if missing:
        raise NotFoundError(f"no key {missing[0]!r} in {cfg.keys_dir}: create it with `shoal keys "
                            f"create {missing[0]}`, or add another maintainer's public key with "
                            f"`shoal keys add {missing[0]} PUBLIC_HEX`")
    return [known[n] for n in names]


def default_for(policy: RootPolicy, channel: str) -> str:
    """The default key name for records of `channel` under `policy`."""
    from registry.policy import channel_role

    return DEFAULT_KEYS[channel_role(policy, channel)]


def in_role(keys: list[SigningKey], policy: RootPolicy, role: str) -> list[SigningKey]:
    """The keys among `keys` that `policy` lists for `role`."""
    return [k for k in keys if k.keyid in policy.roles[role].keyids]


def genesis_policy(cfg_keys: dict[str, SigningKey], registry: str) -> RootPolicy:
    """Root v1 of a registry set up by one maintainer: one key per role, threshold 1 each, the
    snapshot role shared by the staging and promote keys."""
    from registry.publish import make_policy

    roles = {role: ([cfg_keys[role]], 1) for role in DEFAULT_KEYS}
    roles["snapshot"] = ([cfg_keys["staging"], cfg_keys["promote"]], 1)
    return make_policy(version=1, registry=registry, roles=roles)
