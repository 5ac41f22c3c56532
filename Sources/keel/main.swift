import Glibc
import KeelKit

exit(KeelMain.main(Array(CommandLine.arguments.dropFirst())))
