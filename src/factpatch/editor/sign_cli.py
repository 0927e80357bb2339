"""`factpatch patch keygen | sign | verify`: signatures over patch files (core/signing.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from factpatch.core import patchfile
from factpatch.core.signing import SignatureError, TrustedKeys, generate_key, sign, signature_path

out = Console()
EXIT_INPUT, EXIT_REFUSED = 2, 3


def _fail(msg: str, code: int = EXIT_INPUT) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def keygen_cmd(
    out_prefix: Path = typer.Option(..., "--out", help="Writes OUT.key (private, mode 0600) and OUT.pub."),
) -> None:
    """Make a signing key pair (P-256) for patches; give OUT.pub to the control plane and the shards.

    Example: factpatch patch keygen --out release
    """
    private, public = out_prefix.with_name(out_prefix.name + ".key"), out_prefix.with_name(out_prefix.name + ".pub")
    for p in (private, public):
        if p.exists():
            _fail(f"{p} exists; a key is never overwritten")
    kid = generate_key(private, public)
    out.print(f"wrote {private} (keep it secret) and {public}; key id {kid}")


def sign_cmd(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Patch file (.fpatch)."),
    key: Path = typer.Option(..., "--key", exists=True, dir_okay=False, help="Private key (PEM, elliptic curve)."),
    signature: Optional[Path] = typer.Option(None, "--signature", help="Where to write the signature; default PATH.sig."),
) -> None:
    """Sign a patch file (OpenSSF model-signing bundle, offline); `ctl patch push` sends PATH.sig with it.

    Example: factpatch patch sign refund.fpatch --key release.key
    """
    try:
        patchfile.read(path)  # only patches are signed: a typo'd path is said now
    except (OSError, patchfile.PatchError) as e:
        _fail(f"{path}: not a patch file ({e})")
    try:
        written = sign(path, key, signature)
    except SignatureError as e:
        _fail(str(e))
    out.print(f"signed {path} → {written}")


def verify_cmd(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Patch file (.fpatch)."),
    key: list[Path] = typer.Option(..., "--key", exists=True, help="Trusted public key (PEM) or folder of them (repeatable)."),
    signature: Optional[Path] = typer.Option(None, "--signature", help="The signature; default PATH.sig."),
) -> None:
    """Check a patch's signature against trusted public keys; exit 3 when it does not hold.

    Example: factpatch patch verify refund.fpatch --key release.pub
    """
    sig = signature or signature_path(path)
    if not sig.is_file():
        _fail(f"no signature at {sig}", EXIT_REFUSED)
    try:
        keys = TrustedKeys.load(list(key))
    except ValueError as e:
        _fail(str(e))
    try:
        kid = keys.verify(path.read_bytes(), sig.read_bytes())
    except SignatureError as e:
        _fail(f"{e.reason}: {e}", EXIT_REFUSED)
    out.print(f"[green]signature holds[/green]: {path} signed by key {kid}")


def register(patch_app: typer.Typer) -> None:
    patch_app.command("keygen")(keygen_cmd)
    patch_app.command("sign")(sign_cmd)
    patch_app.command("verify")(verify_cmd)
