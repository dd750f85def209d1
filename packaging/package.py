"""Build the .deb (dpkg-deb) and .rpm (rpmbuild) of Berth around an executable (dist/berth).

    python packaging/package.py deb    ->  dist/berth_<version>_amd64.deb
    python packaging/package.py rpm    ->  dist/berth-<version>-1.x86_64.rpm
    ... [--executable FILE] [--out DIR]   package another build (build/host/berth, say)

The version and the glibc the packages require are the executable's own, read from the build
facts written beside it (`<executable>.buildinfo.json`); the version is spelled for each
package manager so that a development build sorts before its release (appliance/version.py).

Both install the same things: /usr/bin/berth; /etc/berth/berth.toml (a config file, mode 0640,
group berth, every setting commented); the hardened unit in /usr/lib/systemd/system (which
`berth ctl reconfigure` re-renders into /etc/systemd/system from the actual config); and
scripts that create the `berth` system user, /var/opt/berth and /var/log/berth, and run
`berth ctl reconfigure` after every install or upgrade, which backs up and migrates the
database and restarts Berth. An upgrade leaves the old version serving until then: the
pre-removal step stops the services only on removal. Removing keeps the data; purging (.deb)
removes data, logs, config and the user.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "packaging"), str(ROOT)]

from appliance import config as settings  # noqa: E402
from appliance import version  # noqa: E402
from appliance.omnibus import template  # noqa: E402
from appliance.omnibus.ctl import render_unit  # noqa: E402
from build import EXECUTABLE, read_buildinfo  # noqa: E402 (packaging/build.py)

DIST = ROOT / "dist"
SUMMARY = "Berth: a self-hosted OCI container registry appliance"
DESCRIPTION = (
    "One executable serving the OCI Distribution API with sign-in, SQLite or PostgreSQL\n"
    "metadata and filesystem or S3 blob storage; administered with `berth ctl`."
)
POSTINST_COMMON = """\
getent group berth >/dev/null || groupadd --system berth
getent passwd berth >/dev/null || useradd --system --gid berth --home-dir /var/opt/berth \\
    --no-create-home --shell /usr/sbin/nologin --comment "Berth registry" berth
install -d -o berth -g berth -m 0750 /var/opt/berth /var/log/berth
chown root:berth /etc/berth /etc/berth/berth.toml
chmod 0750 /etc/berth
chmod 0640 /etc/berth/berth.toml
# Validate the config, back up and migrate the database, render the units, restart what
# changed (Berth itself after an upgrade).
/usr/bin/berth ctl reconfigure --config /etc/berth/berth.toml
"""

STOP_SERVICES = """\
if [ -d /run/systemd/system ]; then
    systemctl stop berth-nginx.service berth.service >/dev/null 2>&1 || true
fi
"""

REMOVE_UNITS = """\
rm -f /etc/systemd/system/berth.service /etc/systemd/system/berth-nginx.service
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"""


def stage(root: Path, executable: Path) -> None:
    """The files both packages install, under `root`."""
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2(executable, root / "usr/bin/berth")
    (root / "usr/bin/berth").chmod(0o755)
    etc = root / "etc/berth"
    etc.mkdir(parents=True)
    (etc / "berth.toml").write_text(template.render())
    (etc / "berth.toml").chmod(0o640)
    config = settings.load(None, environ={}, overrides=template.INSTALL_VALUES)
    unit_dir = root / "usr/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    unit = render_unit(config, Path("/etc/berth/berth.toml"), exe="/usr/bin/berth")
    (unit_dir / "berth.service").write_text(unit)
    doc = root / "usr/share/doc/berth"
    doc.mkdir(parents=True)
    shutil.copy2(ROOT / "README.md", doc / "README.md")
    # The manual: README.md is its front door and links into docs/, kept beside it.
    shutil.copytree(ROOT / "docs", doc / "docs")
    shutil.copy2(ROOT / "CHANGELOG.md", doc / "CHANGELOG.md")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)


def build_deb(executable: Path = EXECUTABLE, out_dir: Path = DIST) -> Path:
    info = read_buildinfo(executable)
    deb_version = version.debian(info["version"])
    out = out_dir / f"berth_{deb_version}_amd64.deb"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        stage(root, executable)
        debian = root / "DEBIAN"
        debian.mkdir()
        size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024
        (debian / "control").write_text(
            "Package: berth\n"
            f"Version: {deb_version}\n"
            "Architecture: amd64\n"
            "Maintainer: Berth maintainers <berth@localhost>\n"
            f"Depends: libc6 (>= {info['glibc']}), passwd\n"
            "Suggests: nginx\n"
            "Section: admin\n"
            "Priority: optional\n"
            f"Installed-Size: {size_kib}\n"
            f"Description: {SUMMARY}\n" + "".join(f" {line}\n" for line in DESCRIPTION.splitlines())
        )
        (debian / "conffiles").write_text("/etc/berth/berth.toml\n")
        _script(
            debian / "postinst",
            'if [ "$1" = configure ]; then\n' + _indent(POSTINST_COMMON) + "fi\n",
        )
        # On upgrade the old version keeps serving until the new postinst has backed up and
        # migrated, then restarts it: the services stop only when the package goes.
        _script(
            debian / "prerm",
            'case "$1" in\nremove|deconfigure)\n' + _indent(STOP_SERVICES) + "    ;;\nesac\n",
        )
        _script(
            debian / "postrm",
            'case "$1" in\n'
            "remove)\n" + _indent(REMOVE_UNITS) + "    ;;\n"
            "purge)\n"
            + _indent(REMOVE_UNITS)
            + "    rm -rf /var/opt/berth /var/log/berth /etc/berth\n"
            "    getent passwd berth >/dev/null && userdel berth || true\n"
            "    getent group berth >/dev/null && groupdel berth || true\n"
            "    ;;\n"
            "esac\n",
        )
        subprocess.run(  # noqa: S603
            ["dpkg-deb", "--root-owner-group", "-Zxz", "-z1", "--build", str(root), str(out)],  # noqa: S607
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


RPM_SPEC = """\
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%global __strip /bin/true
%global _build_id_links none

Name:           berth
Version:        {version}
Release:        1
Summary:        {summary}
License:        Apache-2.0
BuildArch:      x86_64
AutoReqProv:    no
Requires:       glibc >= {glibc}
Requires(pre):  shadow-utils
Requires(post): shadow-utils
Suggests:       nginx

%description
{description}

%install
cp -a {stage}/. %{{buildroot}}/
install -d %{{buildroot}}/var/opt/berth %{{buildroot}}/var/log/berth

%pre
getent group berth >/dev/null || groupadd --system berth
getent passwd berth >/dev/null || useradd --system --gid berth --home-dir /var/opt/berth \\
    --no-create-home --shell /sbin/nologin --comment "Berth registry" berth
exit 0

%post
{postinst}
%preun
if [ "$1" = 0 ]; then
{stop}fi

%postun
if [ "$1" = 0 ]; then
{remove}fi

%files
%attr(0755,root,root) /usr/bin/berth
%dir %attr(0750,root,berth) /etc/berth
%config(noreplace) %attr(0640,root,berth) /etc/berth/berth.toml
/usr/lib/systemd/system/berth.service
%doc /usr/share/doc/berth/README.md
%doc /usr/share/doc/berth/docs
%doc /usr/share/doc/berth/CHANGELOG.md
%dir %attr(0750,berth,berth) /var/opt/berth
%dir %attr(0750,berth,berth) /var/log/berth
"""


def build_rpm(executable: Path = EXECUTABLE, out_dir: Path = DIST) -> Path:
    info = read_buildinfo(executable)
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        root = top / "stage"
        stage(root, executable)
        spec = top / "berth.spec"
        spec.write_text(
            RPM_SPEC.format(
                version=version.rpm(info["version"]),
                summary=SUMMARY,
                glibc=info["glibc"],
                description=DESCRIPTION,
                stage=root,
                postinst=POSTINST_COMMON,
                stop=_indent(STOP_SERVICES),
                remove=_indent(REMOVE_UNITS),
            )
        )
        subprocess.run(  # noqa: S603
            [  # noqa: S607
                "rpmbuild",
                "-bb",
                "--quiet",
                f"--define=_topdir {top / 'rpmbuild'}",
                "--define=_binary_payload w2.xzdio",
                str(spec),
            ],
            check=True,
        )
        built = next((top / "rpmbuild" / "RPMS").rglob("*.rpm"))
        out = out_dir / built.name
        shutil.copy2(built, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build Berth's .deb or .rpm from dist/berth.")
    parser.add_argument("kind", choices=["deb", "rpm"])
    parser.add_argument("--executable", type=Path, default=EXECUTABLE, help="what to package")
    parser.add_argument("--out", type=Path, default=DIST, help="where the package goes")
    args = parser.parse_args()
    executable, out_dir = args.executable.resolve(), args.out.resolve()
    if not executable.exists():
        sys.exit(f"{executable} is missing: run `make dist` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    build = build_deb if args.kind == "deb" else build_rpm
    print(build(executable, out_dir))


if __name__ == "__main__":
    main()
