from rcvcore.cli import main

raise SystemExit(main())
