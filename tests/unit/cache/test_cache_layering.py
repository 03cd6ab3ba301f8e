import subprocess
import sys


def test_no_cache_module_imports_ray_or_serve():
    code = (
        "import importlib, pkgutil, sys, cache\n"
        "for m in pkgutil.iter_modules(cache.__path__): importlib.import_module('cache.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))[:5])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
