"""dbt's analyses: `.sql` files of `analysis-paths` (default `analyses/`), rendered with a model's context
(ref, source, var, macros) and written to target/compiled/<project>/<path>, never run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from batchflow.errors import BatchflowError
from batchflow.project import ModelFile, _discover, _read_text, _rel

if TYPE_CHECKING:
    from batchflow.compiler import Compiler
    from batchflow.project import ConfigWarning


def compile_analyses(compiler: "Compiler") -> tuple[list[Path], list["ConfigWarning"]]:
    """Render every analysis to target/compiled; returns the files written and a warning (file:line)
    for each analysis that did not render (it is left out, as a model that does not compile)."""
    from batchflow.project import ConfigWarning

    project = compiler.project
    out_root = project.target_path / "compiled" / project.name
    written: list[Path] = []
    warnings: list[ConfigWarning] = []
    for abs_path, sub in _discover(project.root, project.analysis_paths, (".sql",)):
        relative = _rel(project.root, abs_path)
        text = _read_text(abs_path)
        model = ModelFile(name=abs_path.stem, path=relative, abs_path=abs_path, raw_sql=text,
                          fqn=[project.name, "analysis", *sub, abs_path.stem], config={})
        try:
            sql, _ = compiler.render_text(model, text)
        except BatchflowError as exc:
            warnings.append(ConfigWarning(f"analysis {abs_path.stem!r} did not compile: {exc.message}",
                                          exc.path or str(relative), exc.line))
            continue
        path = out_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql.strip() + "\n")
        written.append(path)
    return written, warnings
