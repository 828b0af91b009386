"""The repo map: tree-sitter symbols per language, relevance ranking, rendering under a budget."""

from __future__ import annotations

import pytest

from corolla.assistant.context import EditorState, build_context, extract_symbols
from corolla.assistant.context.ranking import import_fragments, imported_files
from corolla.assistant.context.symbols import symbol_language
from tests.assistant.context_workspace import SAMPLES, write


@pytest.mark.parametrize("path", sorted(SAMPLES))
def test_symbols_per_language(path):
    source, expected = SAMPLES[path]
    symbols = extract_symbols(source.encode(), symbol_language(path))
    assert {(s.name, s.kind) for s in symbols} == expected
    lines = source.splitlines()
    for s in symbols:
        assert lines[s.line - 1].rstrip() == s.signature and s.name in s.signature
    assert [s.line for s in symbols] == sorted(s.line for s in symbols)


def test_broken_source_still_yields_what_parses():
    symbols = extract_symbols(b"def good():\n    pass\n\ndef broken(:\n    pass\n\nclass Fine:\n    pass\n", "python")
    assert {"good", "Fine"} <= {s.name for s in symbols}


def noise(i: int) -> str:
    return f"def helper_{i}(x):\n    return x + {i}\n"


def ranking_workspace(root):
    files = {f"pkg{i % 7}/sub{i % 3}/mod_{i}.py": noise(i) for i in range(120)}
    files.update({
        "billing/core/invoice_math.py": "def compute_invoice_total(items):\n    return sum(items)\n",
        "billing/api/routes.py": "from billing.core.invoice_math import compute_invoice_total\n\n"
                                 "def handler(req):\n    return compute_invoice_total(req.items)\n",
        "billing/api/schemas.py": "class InvoiceSchema:\n    pass\n",
        "shipping/rates.py": "def shipping_rate(weight):\n    return weight * 2\n",
        "web/src/cart.ts": "import { price } from './price';\n"
                           "export function cartTotal(): number { return price(); }\n",
        "web/src/price.ts": "export function price(): number { return 1; }\n",
        "README.md": "# readme\n",
    })
    return write(root, files)


def map_files(ctx) -> list[str]:
    part = next(p for p in ctx.parts if p.kind == "repo_map")
    return [line[:-1] for line in part.text.splitlines()[2:-1] if line.endswith(":") and not line.startswith(" ")]


def test_query_identifier_ranks_its_definition_first(tmp_path):
    root = ranking_workspace(tmp_path)
    ctx = build_context(EditorState(root), "why does compute_invoice_total round wrong?", include_tree=False)
    assert map_files(ctx)[0] == "billing/core/invoice_math.py"
    ctx = build_context(EditorState(root), "the shipping rate is off", include_tree=False)
    assert map_files(ctx)[0] == "shipping/rates.py"  # path words of the query


def test_imports_and_folder_of_the_current_file_rank_high(tmp_path):
    root = ranking_workspace(tmp_path)
    ctx = build_context(EditorState(root, current_file="billing/api/routes.py"), "", include_tree=False)
    files = map_files(ctx)
    assert files[:2] == ["billing/core/invoice_math.py", "billing/api/schemas.py"]
    assert "billing/api/routes.py" not in files  # shown whole as the current file
    ctx = build_context(EditorState(root, current_file="web/src/cart.ts"), "", include_tree=False)
    assert map_files(ctx)[0] == "web/src/price.ts"


def test_selection_identifiers_rank_their_definitions(tmp_path):
    root = ranking_workspace(tmp_path)
    write(root, {"app.py": "x = 1\ny = shipping_rate(3)\nz = 2\n"})
    ctx = build_context(EditorState(root, current_file="app.py", selection=(2, 2)), "", include_tree=False)
    assert map_files(ctx)[0] == "shipping/rates.py"


def test_map_renders_signatures_with_line_numbers_and_fits(tmp_path):
    root = ranking_workspace(tmp_path)
    ctx = build_context(EditorState(root), "compute_invoice_total", budget_tokens=120, include_tree=False)
    part = next(p for p in ctx.parts if p.kind == "repo_map")
    assert part.truncated and part.tokens <= 120
    lines = part.text.splitlines()
    assert lines[0].startswith("### Repository map")
    assert lines[2:4] == ["billing/core/invoice_math.py:", "     1│def compute_invoice_total(items):"]


def test_import_fragments_per_language():
    py = "from . import sibling\nfrom ..pkg.mod import a, b\nimport os.path, json\nfrom x.y import (\n    z,\n)\n"
    assert import_fragments("src/app/main.py", py) == sorted(
        ["src/app", "src/app/sibling", "src/pkg/mod", "src/pkg/mod/a", "src/pkg/mod/b", "os/path", "json",
         "x/y", "x/y/z"])
    ts = "import a from './a';\nimport {b} from '../lib/b';\nconst c = require('@/c');\nexport * from 'pkg';\n"
    assert import_fragments("web/src/x.ts", ts) == ["c", "pkg", "web/lib/b", "web/src/a"]
    go = 'import (\n  "fmt"\n  st "example.com/app/internal/store"\n)\nimport "os"\n'
    assert import_fragments("cmd/main.go", go) == ["example.com/app/internal/store", "fmt", "os"]
    rs = "use crate::net::{Client, Server};\nmod util;\n"
    assert import_fragments("src/lib.rs", rs) == ["net", "net/Client", "net/Server", "src/util"]
    java = "import com.acme.bank.Account;\nimport com.acme.util.*;\n"
    assert import_fragments("A.java", java) == ["com/acme/bank/Account", "com/acme/util"]
    files = ["src/app/sibling.py", "src/pkg/mod/__init__.py", "internal/store/s.go", "web/lib/b.ts",
             "java/com/acme/bank/Account.java", "src/util.rs", "src/other.py"]
    frags = import_fragments("src/app/main.py", py) + import_fragments("web/src/x.ts", ts) + \
        import_fragments("cmd/main.go", go) + import_fragments("src/lib.rs", rs) + import_fragments("A.java", java)
    assert imported_files(frags, files) == set(files) - {"src/other.py"}
