from qfair.cli import main

main()
