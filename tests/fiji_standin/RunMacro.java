package ofmtiling.standin;

import ij.IJ;

/**
 * TEST STAND-IN entry point for a fake Fiji launcher: registers the stand-in "Grid/Collection
 * stitching" command in headless ImageJ 1, then runs a macro file (args: file [argument]).
 */
public class RunMacro {
    public static void main(String[] args) throws Exception {
        GridCollectionStandIn.register();
        String result = IJ.runMacroFile(args[0], args.length > 1 ? args[1] : "");
        System.out.println("RunMacro finished: " + result);
        System.exit(0);
    }
}
