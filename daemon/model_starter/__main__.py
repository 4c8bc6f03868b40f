from model_starter.cli import main

raise SystemExit(main())
