"""``python -m scripts.bench``"""

from .main import main

raise SystemExit(main())
